//! tmp
#[allow(missing_docs, unreachable_pub, clippy::all)]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/gossipkv.v1.rs"));
}
