//! redirector's XDP programs. Packet rules (what is forwarded, passed,
//! dropped, and how each is counted) are written down in `xdp/mod.rs`.
#![no_std]
#![no_main]

mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach a real panic.
    loop {}
}
