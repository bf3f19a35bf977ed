//! What the process may use, and how it keeps within it: open files
//! (raised at start-up), memory (a watermark above which the broker
//! defends itself), and the bytes of read buffers beyond their everyday
//! size (one budget for every connection).

pub mod memory;
pub mod open_files;
pub mod read_budget;
