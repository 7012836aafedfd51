//! Pure request/response transformations for the filters of a matched rule.

mod cors;
mod headers;
mod redirect;

pub use cors::{CorsOutcome, cors};
pub use headers::modify_headers;
pub use redirect::{RequestTarget, redirect_location, rewrite_path};
