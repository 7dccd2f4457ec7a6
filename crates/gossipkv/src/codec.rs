//! Value codecs: how values of type `V` become bytes and back.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

/// A value could not be encoded or decoded.
///
/// It carries a message and, when the codec had one, the underlying error
/// ([`std::error::Error::source`] returns it: a `serde_json::Error` from
/// [`JsonCodec`] and [`DefaultCodec`], a [`std::str::Utf8Error`] from
/// [`StringCodec`]). The API wraps it in
/// [`Error::Codec`](crate::Error::Codec), which names the key.
///
/// Two codec errors are equal when their messages and their sources'
/// messages are equal.
#[derive(Debug, Clone)]
pub struct CodecError {
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl CodecError {
    /// Creates an error with a message and no source.
    pub fn new(message: impl fmt::Display) -> Self {
        CodecError {
            message: message.to_string(),
            source: None,
        }
    }

    /// Creates an error with a message and the error that caused it, which
    /// [`source`](std::error::Error::source) returns. The message should say
    /// what failed without repeating the source's own text.
    pub fn with_source(
        message: impl fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        CodecError {
            message: message.to_string(),
            source: Some(Arc::new(source)),
        }
    }

    /// The message, without the source's.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CodecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl PartialEq for CodecError {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
            && self.source.as_ref().map(ToString::to_string)
                == other.source.as_ref().map(ToString::to_string)
    }
}

impl Eq for CodecError {}

/// Turns values into bytes and back. Implementations must be deterministic
/// enough that `decode(encode(v)) == v`.
pub trait Codec<V>: Send + Sync + 'static {
    /// Encodes a value.
    fn encode(&self, value: &V) -> Result<Bytes, CodecError>;
    /// Encodes a value the caller gives away; codecs override it to reuse
    /// the value's buffer instead of copying it.
    fn encode_owned(&self, value: V) -> Result<Bytes, CodecError> {
        self.encode(&value)
    }
    /// Decodes a value.
    fn decode(&self, bytes: &Bytes) -> Result<V, CodecError>;
}

/// The default codec: `String`, `Vec<u8>` and `bytes::Bytes` are stored as
/// their raw bytes (no copy for `Bytes`, UTF-8 checked for `String`); every
/// other `Serialize + DeserializeOwned` type is stored as JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultCodec;

impl<V: Serialize + DeserializeOwned + 'static> Codec<V> for DefaultCodec {
    fn encode(&self, value: &V) -> Result<Bytes, CodecError> {
        let any = value as &dyn Any;
        if let Some(s) = any.downcast_ref::<String>() {
            return Ok(Bytes::copy_from_slice(s.as_bytes()));
        }
        if let Some(b) = any.downcast_ref::<Bytes>() {
            return Ok(b.clone());
        }
        if let Some(v) = any.downcast_ref::<Vec<u8>>() {
            return Ok(Bytes::copy_from_slice(v));
        }
        JsonCodec.encode(value)
    }

    fn encode_owned(&self, value: V) -> Result<Bytes, CodecError> {
        let mut slot = Some(value);
        let any = &mut slot as &mut dyn Any;
        if let Some(s) = any.downcast_mut::<Option<String>>() {
            return Ok(Bytes::from(s.take().unwrap_or_default()));
        }
        if let Some(v) = any.downcast_mut::<Option<Vec<u8>>>() {
            return Ok(Bytes::from(v.take().unwrap_or_default()));
        }
        if let Some(b) = any.downcast_mut::<Option<Bytes>>() {
            return Ok(b.take().unwrap_or_default());
        }
        match slot {
            Some(v) => JsonCodec.encode(&v),
            None => Err(CodecError::new("value was taken")),
        }
    }
    fn decode(&self, bytes: &Bytes) -> Result<V, CodecError> {
        let mut out: Option<V> = None;
        let slot = &mut out as &mut dyn Any;
        if let Some(s) = slot.downcast_mut::<Option<String>>() {
            *s = Some(StringCodec.decode(bytes)?);
        } else if let Some(b) = slot.downcast_mut::<Option<Bytes>>() {
            *b = Some(bytes.clone());
        } else if let Some(v) = slot.downcast_mut::<Option<Vec<u8>>>() {
            *v = Some(bytes.to_vec());
        }
        match out {
            Some(v) => Ok(v),
            None => JsonCodec.decode(bytes),
        }
    }
}

/// JSON, for any `Serialize + DeserializeOwned` type.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl<V: Serialize + DeserializeOwned> Codec<V> for JsonCodec {
    fn encode(&self, value: &V) -> Result<Bytes, CodecError> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| CodecError::with_source("cannot encode the value as JSON", e))
    }

    fn decode(&self, bytes: &Bytes) -> Result<V, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| {
            CodecError::with_source(
                format!(
                    "{} bytes do not decode as JSON of {}",
                    bytes.len(),
                    std::any::type_name::<V>()
                ),
                e,
            )
        })
    }
}

/// UTF-8 text stored as its bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct StringCodec;

impl Codec<String> for StringCodec {
    fn encode(&self, value: &String) -> Result<Bytes, CodecError> {
        Ok(Bytes::copy_from_slice(value.as_bytes()))
    }

    fn encode_owned(&self, value: String) -> Result<Bytes, CodecError> {
        Ok(Bytes::from(value))
    }
    fn decode(&self, bytes: &Bytes) -> Result<String, CodecError> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| CodecError::with_source("value is not UTF-8 text", e))
    }
}

/// Raw bytes, without a copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

impl Codec<Bytes> for BytesCodec {
    fn encode(&self, value: &Bytes) -> Result<Bytes, CodecError> {
        Ok(value.clone())
    }

    fn decode(&self, bytes: &Bytes) -> Result<Bytes, CodecError> {
        Ok(bytes.clone())
    }
}

impl Codec<Vec<u8>> for BytesCodec {
    fn encode(&self, value: &Vec<u8>) -> Result<Bytes, CodecError> {
        Ok(Bytes::copy_from_slice(value))
    }

    fn encode_owned(&self, value: Vec<u8>) -> Result<Bytes, CodecError> {
        Ok(Bytes::from(value))
    }
    fn decode(&self, bytes: &Bytes) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_codec_stores_strings_and_bytes_raw() {
        let s = "héllo".to_string();
        assert_eq!(
            &Codec::<String>::encode(&DefaultCodec, &s).unwrap()[..],
            "héllo".as_bytes()
        );
        let back: String = DefaultCodec
            .decode(&Bytes::from_static("héllo".as_bytes()))
            .unwrap();
        assert_eq!(back, s);
        let b = Bytes::from_static(b"\x00\xff");
        assert_eq!(Codec::<Bytes>::encode(&DefaultCodec, &b).unwrap(), b);
        let v: Vec<u8> = DefaultCodec.decode(&b).unwrap();
        assert_eq!(v, vec![0, 255]);
    }

    #[test]
    fn default_codec_uses_json_for_other_types() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Flag {
            on: bool,
            pct: u8,
        }
        let f = Flag { on: true, pct: 20 };
        let bytes = DefaultCodec.encode(&f).unwrap();
        assert_eq!(&bytes[..], br#"{"on":true,"pct":20}"#);
        let back: Flag = DefaultCodec.decode(&bytes).unwrap();
        assert_eq!(back, f);
        assert!(Codec::<Flag>::decode(&DefaultCodec, &Bytes::from_static(b"nope")).is_err());
    }

    #[test]
    fn owned_encoding_reuses_the_buffer() {
        let s = "x".repeat(1000);
        let ptr = s.as_ptr();
        let b = Codec::<String>::encode_owned(&DefaultCodec, s).unwrap();
        assert_eq!(b.as_ptr(), ptr, "no copy");
        let v = vec![1u8; 100];
        let ptr = v.as_ptr();
        assert_eq!(
            Codec::<Vec<u8>>::encode_owned(&DefaultCodec, v)
                .unwrap()
                .as_ptr(),
            ptr
        );
        let f: Bytes = Codec::<Vec<u8>>::encode_owned(&DefaultCodec, vec![1]).unwrap();
        assert_eq!(&f[..], &[1]);
    }

    #[test]
    fn string_codec_rejects_invalid_utf8() {
        assert!(StringCodec.decode(&Bytes::from_static(b"\xff")).is_err());
    }

    #[test]
    fn codec_errors_keep_their_source() {
        use std::error::Error as _;
        // serde_json's error, from JsonCodec and from DefaultCodec's JSON path.
        let e = Codec::<Vec<u32>>::decode(&JsonCodec, &Bytes::from_static(b"{oops")).unwrap_err();
        let src = e.source().expect("a source");
        assert!(src.downcast_ref::<serde_json::Error>().is_some(), "{src:?}");
        assert!(e.to_string().contains("JSON"), "{e}");
        assert!(
            !e.to_string().contains(&src.to_string()),
            "not repeated: {e}"
        );
        let e = Codec::<Vec<u32>>::decode(&DefaultCodec, &Bytes::from_static(b"[1,")).unwrap_err();
        assert!(e
            .source()
            .unwrap()
            .downcast_ref::<serde_json::Error>()
            .is_some());
        // Utf8Error from the string codecs.
        let e = Codec::<String>::decode(&DefaultCodec, &Bytes::from_static(b"\xff")).unwrap_err();
        assert!(e
            .source()
            .unwrap()
            .downcast_ref::<std::str::Utf8Error>()
            .is_some());
        // A plain error has none; clones and equality keep it.
        let plain = CodecError::new("bad");
        assert!(plain.source().is_none());
        assert_eq!(plain.message(), "bad");
        assert_eq!(e.clone(), e);
        assert_ne!(plain, e);
    }
}
