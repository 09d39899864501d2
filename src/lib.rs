pub mod bencode;
pub mod bitfield;
pub mod metainfo;
pub mod picker;
pub mod piece;
pub mod store;
pub mod units;
pub mod wire;
