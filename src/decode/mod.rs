//! Decoders: bytes into structured values, no meaning attached yet. Pure functions, no I/O.
//! Every failure is a `Reject` naming what was wrong.

pub mod json;
pub mod senml;
