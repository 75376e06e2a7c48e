//! The command line's subcommands other than `run`: `doctor`, `demo`, `top`, the
//! dead-letter commands and the model commands. Each takes its options and prints;
//! none is on the data path.

pub mod dead_letters;
pub mod demo;
pub mod doctor;
pub mod model;
pub mod top;
