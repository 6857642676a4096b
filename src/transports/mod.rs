//! Native transports, one module per kind. Each is the hot half of a Python transport class
//! (`python/ferroloop/_transports.py`) that subclasses the matching `asyncio` transport, so
//! `isinstance(transport, asyncio.Transport)` holds while the read and write paths run here.
//!
//! - [`stream`]: TCP and Unix stream sockets;
//! - [`datagram`]: UDP and Unix datagram sockets.

pub mod datagram;
pub mod stream;
