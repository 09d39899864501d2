//! Property tests of the codecs; unit cases sit beside each codec.

mod props;
