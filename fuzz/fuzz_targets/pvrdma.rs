//! The PVRDMA device model under hostile guest input: the whole device
//! (guest memory from the input, a probe, then register and doorbell
//! writes), and the parsers on their own: any
//! command slot, any send or receive WQE header, any ring indices and any
//! register and doorbell writes. None may panic; a parsed command's
//! header must be the slot's first bytes, and ring answers must name a
//! slot inside the ring.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvrdma_model::{
    abi::{CMD_SLOT_LEN, Cqe, RqWqeHdr, SqWqeHdr},
    cmd::Command,
    device::{Device, Limits},
    regs::{Doorbell, Registers, reg},
    ring::RingIdx,
};
use transport::memory::{Memory, VecMemory};
use zerocopy::FromBytes;

/// The whole device under a hostile guest: guest memory filled from the
/// input (so every slot, ring, directory and WQE is the fuzzer's), a
/// probe, then the input's register and doorbell writes.
fn device(data: &[u8]) {
    const MEM: usize = 1 << 18;
    let mut mem = VecMemory::new(MEM);
    let n = data.len().min(MEM);
    let _ = mem.write(0, &data[..n]);
    let mut d = Device::new([2, 0, 0, 0, 0, 1], Limits::default(), mem);
    d.bar1_write(reg::DSRLOW, 0x1000);
    d.bar1_write(reg::DSRHIGH, 0);
    d.bar1_write(reg::IMR, 0);
    d.bar1_write(reg::CTL, 0);
    for op in data.chunks_exact(6).take(64) {
        let off = u64::from(u16::from_le_bytes([op[0], op[1]]));
        let v = u32::from_le_bytes([op[2], op[3], op[4], op[5]]);
        match op[0] & 3 {
            0 => {
                d.bar1_write(reg::REQUEST, 0);
            }
            1 => {
                d.bar2_write(off & 0xfffc, v);
            }
            2 => {
                let _ = d.bar1_read(off & 0xfc);
                d.bar1_write(off & 0x3c, v);
            }
            _ => {
                let _ = d.service();
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    device(data);
    let mut slot = [0u8; CMD_SLOT_LEN];
    let n = data.len().min(CMD_SLOT_LEN);
    slot[..n].copy_from_slice(&data[..n]);
    if let Ok(cmd) = Command::parse(&slot) {
        assert_eq!(cmd.hdr().cmd.get().to_le_bytes(), slot[8..12]);
    }
    if let Ok((h, _)) = SqWqeHdr::read_from_prefix(data) {
        let _ = (h.rdma(), h.atomic(), h.ud(), h.fast_reg());
    }
    let _ = RqWqeHdr::read_from_prefix(data);
    let _ = Cqe::read_from_prefix(data);
    let word = |i: usize| {
        let mut b = [0u8; 4];
        for (k, x) in b.iter_mut().enumerate() {
            *x = data.get(i * 4 + k).copied().unwrap_or(0);
        }
        u32::from_le_bytes(b)
    };
    let r = RingIdx::new(word(0) % (1 << 20));
    for (prod, cons) in [(word(1), word(2)), (word(3), word(4))] {
        if let Ok(Some(s)) = r.has_data(prod, cons) {
            assert!(s < r.len().next_power_of_two());
        }
        if let Ok(Some(s)) = r.has_space(prod, cons) {
            assert!(s < r.len().next_power_of_two());
        }
    }
    let mut regs = Registers::new(20, [2, 0, 0, 0, 0, 1]);
    for pair in data.chunks(8) {
        let off = u64::from(pair[0]) & 0xfc;
        let v = word(1);
        let _ = regs.write(off, v);
        let _ = regs.read(off);
        let _ = regs.raise(u32::from(pair[0] & 7));
        let _ = Doorbell::decode(u64::from(v), word(2));
    }
});
