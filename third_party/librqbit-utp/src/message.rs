use tracing::trace;

use crate::{
    Payload,
    raw::{Type, UtpHeader},
};

#[derive(Default, Clone, PartialEq, Eq)]
pub struct UtpMessage {
    pub header: UtpHeader,
    pub data: Payload,
}

impl std::fmt::Debug for UtpMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.header.short_repr())?;
        if cfg!(test) {
            write!(
                f,
                ":payload_len={}:payload={:?}",
                self.payload().len(),
                std::str::from_utf8(self.payload()).unwrap()
            )
        } else {
            write!(f, ":payload_len={}", self.payload().len())
        }
    }
}

impl UtpMessage {
    #[cfg(test)]
    pub fn new_test(header: UtpHeader, payload: &[u8]) -> Self {
        UtpMessage {
            header,
            data: bytes::Bytes::copy_from_slice(payload),
        }
    }

    /// The packet in `buf`, its payload copied out.
    #[cfg(test)]
    pub fn deserialize(buf: &[u8]) -> Option<Self> {
        Self::deserialize_shared(bytes::Bytes::copy_from_slice(buf))
    }

    /// The packet in `buf`, its payload a slice of `buf` (no copy; `buf` is advanced past the
    /// header rather than sliced, which would count a reference more and then one less on
    /// the buffer it shares, two atomic operations per packet).
    pub fn deserialize_shared(mut buf: bytes::Bytes) -> Option<Self> {
        let (header, hsize) = UtpHeader::deserialize(&buf)?;

        let payload_size = buf.len() - hsize;

        match header.get_type() {
            Type::ST_DATA => {
                if payload_size == 0 {
                    trace!("ST_DATA packet with 0 payload, ignoring");
                    return None;
                }
            }
            other => {
                if payload_size > 0 {
                    trace!("{other:?} packet with payload, ignoring");
                    return None;
                }
            }
        }

        bytes::Buf::advance(&mut buf, hsize);
        Some(Self { header, data: buf })
    }

    pub fn payload(&self) -> &[u8] {
        &self.data
    }
}
