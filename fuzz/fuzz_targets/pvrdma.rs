//! The PVRDMA device model's parsers under hostile guest input: any
//! command slot, any send or receive WQE header, any ring indices and any
//! register and doorbell writes. None may panic; a parsed command's
//! header must be the slot's first bytes, and ring answers must name a
//! slot inside the ring.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvrdma_model::{
    abi::{CMD_SLOT_LEN, Cqe, RqWqeHdr, SqWqeHdr},
    cmd::Command,
    regs::{Doorbell, Registers},
    ring::RingIdx,
};
use zerocopy::FromBytes;

fuzz_target!(|data: &[u8]| {
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
