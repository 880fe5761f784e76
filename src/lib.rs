//! roomcast: a chatroom relay over QUIC.
//!
//! Clients connect over QUIC (ALPN `roomcast/1`), authenticate with a token, join rooms that have no
//! member limit, and exchange messages that the relay fans out to every member. Operators drive it
//! through an HTTP admin API and scrape it with Prometheus.
//!
//! # Layout
//! One stack of modules, each importing only from the layers below it (`tests/stack.rs` reads
//! every `crate::` path and fails on an upward edge):
//!
//! ```text
//! protocol                      wire types, codec, ids, error names; no I/O beyond frames
//! metrics · net · tls · auth    leaf services: metric names, the UDP socket, TLS, tokens
//! policy                        pure decisions taking `now`: send checks, classes, budgets, timers
//! room                          room::core, the membership state machine (inputs + now ->
//!                               effects; no clock, socket, task or lock) + the broadcast ring
//! store                         the durable store behind its trait (redb, group commit)
//! config                        configuration: one documented place per key, validation
//! server                        the shell: Relay feeds the core and applies its effects; QUIC,
//!                               WebTransport and WebSocket sessions, delivery tasks, timers
//! admin                         the axum router: /v1, /metrics, /healthz, /openapi.json
//! node                          one relay process: store + relay + listeners + admin
//! bench                         the load harness (`roomcast bench`, cargo feature `bench`)
//! ```
//! [`client`] stands beside the stack (it imports `protocol`, `tls` and `net` only); the binary
//! (`main.rs`, `chat.rs`) uses the library from above.
//!
//! - [`protocol`]: the wire protocol; its module doc is the protocol specification.
//! - [`room`]: [`room::core::Core`] (who is in which room incarnation over which connections),
//!   room state as plain data and the lock-free per-room broadcast ring.
//! - [`server`]: the shell around the core; [`node`]: a whole relay process.
//! - [`admin`], [`client`], [`config`], [`auth`], [`tls`], [`metrics`](mod@metrics),
//!   [`policy`], [`store`], [`net`] as above.
//!
//! # The path of a message
//! 1. A client's `Send` arrives on its control stream; its session (`server`) hands it to
//!    [`server::Relay::send`].
//! 2. The relay asks the core whether the sender is a member and may send
//!    ([`room::core::Core::check_send`], the mute order of [`policy`]), then the room's budget.
//! 3. The room's [`room::Ring`] stamps it (seq, ts, in order) and encodes the frame once; an
//!    append history keeps goes to the [`store`] under the ring's publisher lock, and with `sync`
//!    durability the message is held out of the ring until the store has it (a refused append is
//!    seen by no one; the sender gets `UNAVAILABLE`).
//! 4. The ring wakes the members' delivery tasks, which read it at their own cursors and write
//!    everything ready in one vectored write (low-priority messages as datagrams). A publisher
//!    never waits for a subscriber; one that falls a ring behind is told the exact count it
//!    missed in a `Gap`. A membership that ends (leave, kick, ban, offline) is unsubscribed at
//!    its place in the ring, as the core's effect: everything before, then `Kicked`, nothing
//!    after.

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
