//! Starling broker library.
