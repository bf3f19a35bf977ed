//! Network listeners. Each accepted connection gets its own task.

pub mod tcp;
