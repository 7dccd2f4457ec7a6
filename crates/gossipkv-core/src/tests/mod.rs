//! Unit tests of the protocol as a whole, driven by hand.

mod address;
mod guards;
mod hostile;
mod newcomers;
mod protocol;
mod stream_guards;
mod streams;
mod synced;
