//! sigil: an internal certificate authority for service-to-service mutual TLS.
//!
//! Modules follow trust boundaries; ARCHITECTURE.md has the map and the invariants.
//!
//! - [`http`]: the HTTP edge, the only place untrusted bytes enter.
//! - [`authority`]: decides: authenticates callers, applies policy, builds templates.
//! - [`ca`]: signs; the only module that touches CA private keys.
//! - [`store`]: the only module with SQL.
//! - [`crl`]: builds, stores and publishes CRLs.
//! - [`policy`], [`token`], [`names`]: the rules, the bootstrap tokens, the parsed names.
//! - [`policy_cmd`]: offline commands to create provisioners and check or explain policies.
//! - [`client`]: the client side of the command line.

pub mod authority;
pub mod ca;
pub mod cli;
pub mod client;
pub mod config;
pub mod crl;
pub mod error;
pub mod http;
pub mod metrics;
pub mod names;
pub mod pem;
pub mod policy;
pub mod policy_cmd;
pub mod server;
pub mod store;
pub mod token;
