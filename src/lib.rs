//! roomcast: a chatroom relay over QUIC.
//!
//! Clients connect over QUIC (ALPN `roomcast/1`), authenticate with a token, join rooms that have no
//! member limit, and exchange messages that the relay fans out to every member. Operators drive it
//! through an HTTP admin API and scrape it with Prometheus.
//!
//! # Layout
//! - [`protocol`]: the wire protocol: frame types, length-delimited postcard codec, error names.
//!   No I/O beyond reading frames; its module doc is the protocol specification.
//! - [`room`]: room state as plain data and the lock-free per-room broadcast ring.
//! - [`server`]: the QUIC endpoint, one session per connection (control stream, delivery task),
//!   the registry of rooms, users and connections, and the data folder bootstrap.
//! - [`admin`]: the axum router: `/v1` admin API, `/metrics`, `/healthz`, `/openapi.json`.
//! - [`client`]: the client library, used by the `sub`, `pub` and `chat` commands.
//! - [`config`]: configuration with documented defaults, TOML overrides and validation.
//! - [`auth`]: client tokens (HS256 JWT) and the admin key.
//! - [`tls`]: the development CA and the rustls configurations.
//! - [`metrics`](mod@metrics): metric names, help text and the Prometheus recorder.
//! - [`bench`](mod@bench): the load harness behind `roomcast bench`, with a raw-QUIC baseline server.
//! - [`policy`]: pure decisions (send checks, classes, budgets, timers, shedding) taking `now`.
//! - [`store`]: the durable store behind a small trait (redb, group commit).
//!
//! # Data flow
//! A client's `Send` arrives on its control stream; the session checks it and publishes it into the
//! room's [`room::Ring`], which encodes the event frame once and wakes the members' delivery tasks
//! (with `sync` durability, once the store has appended it: nothing is seen before it is durable).
//! Each delivery task reads the ring at its own cursor and writes everything ready in one vectored
//! write on its connection's delivery stream (low-priority messages as datagrams). A publisher never
//! waits for a subscriber; a subscriber that falls a ring behind skips ahead and is told the exact
//! count it missed.

pub mod admin;
pub mod auth;
#[cfg(feature = "bench")]
pub mod bench;
pub mod client;
pub mod config;
pub mod metrics;
pub mod net;
pub mod node;
pub mod policy;
pub mod protocol;
pub mod room;
pub mod server;
pub mod store;
pub mod tls;
