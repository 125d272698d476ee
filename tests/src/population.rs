//! Many clients made through the library rather than SIP: a two-home edge
//! config on `lo`, and numbered AORs and client addresses (shared by the
//! benchmark's population and the batched-map test).

use std::net::{Ipv4Addr, SocketAddr};

use redirector::{config::Config, sip::Aor};

pub const SERVERS: [&str; 2] = ["home0", "home1"];

/// An edge on `lo` with two home servers, in `mode` (dsr or nat).
pub fn config(mode: &str) -> Config {
    let text = format!(
        "interface = \"lo\"\nmode = \"{mode}\"\n[service]\naddresses = [\"192.0.2.10\"]\n[edge]\nipv4 = \"10.77.0.1\"\n\
         [[servers]]\nname = \"home0\"\nipv4 = \"10.77.0.11\"\n[[servers]]\nname = \"home1\"\nipv4 = \"10.77.0.12\"\n"
    );
    Config::parse(&text).expect("a valid two-home config")
}

pub fn aor(i: u32) -> Aor {
    Aor::from_uri(&format!("sip:u{i}@bench.example"), "To").expect("a valid AOR")
}

/// Client `i`'s address: 10.0.0.0/8 counted up from 10.0.0.1.
pub fn client(i: u32) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::from(0x0a00_0001 + i).into(), 5060)
}

pub fn service() -> SocketAddr {
    "192.0.2.10:5060".parse().unwrap()
}
