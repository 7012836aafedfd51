//! The `strait` binary's library half: the standalone runtime and the offline checker, shared by
//! the CLI and the conformance harness (which drives standalone in-process).

mod addresses;
pub mod allocator;
mod aside;
pub mod check;
pub mod controller;
pub mod demo;
pub mod health;
pub mod mesh;
pub mod runtime;
pub mod standalone;
mod stoppable;
mod store;
pub mod subscribe;

pub use addresses::AddressMode;
