//! VM to VM through two daemons: each "VM" is a vfio-user client with
//! memfd guest memory and `pvrdma_model::driver` (the stock driver's
//! steps) attached to its own `vhost-user-rdma` daemon, and the daemons
//! run in two network namespaces joined by a veth pair (`--packet` on
//! each end). A seeded soak then posts random work through the guests'
//! rings and doorbells: RC with every opcode the device takes (SEND,
//! SEND_WITH_IMM, RDMA WRITE, WRITE_WITH_IMM, READ, CMP_SWAP, FETCH_ADD,
//! and the kernel's FAST_REG_MR, SEND_WITH_INV and LOCAL_INV around
//! WRITEs and READs through a fast-registered key over shuffled pages),
//! UC (SEND, WRITE, with and without immediate) and UD (SEND with the
//! GRH), sizes from 0 B to 64 KiB gathered from and scattered to up to
//! four SGEs over scattered guest pages, a random path MTU and PSNs near
//! the 24-bit wrap. Every completion is checked field by field and, after
//! every batch, every byte of both guests' MRs against a model. Then the
//! figures: RC WRITE bandwidth (64 KiB) and SEND ping-pong latency (64 B)
//! VM to VM, beside the engine alone in the same run; and last a WRITE
//! through a retired key, which must fail with a remote access error and
//! leave both RC QPs in ERR.
//!
//! Needs root (namespaces, veth). `VUR_SOAK_SEED`, `VUR_SOAK_OPS` and
//! `VUR_SOAK_SECS` steer it; a failure prints the seed.

mod common;

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::{BIN, Daemon, GPA, Netns, Ram, VfioBus, is_root, pvrdma_daemon, sh};
use pvrdma_model::{
    abi::{Cqe, Sge, SqWqeHdr, event, wc_opcode, wr_opcode},
    cmd::code,
    driver::{
        Cq, Driver, Mr, Qp, QpSpec, gid_v4, send_wqe, sge, with_atomic, with_fast_reg,
        with_invalidate, with_rdma, with_ud,
    },
};
use rand::{Rng, SeedableRng, rngs::SmallRng, seq::SliceRandom};

const MEM: u64 = 64 << 20;
const MR_PAGES: u32 = 256;
const SLOT: u64 = 64 << 10;
const SLOTS: u64 = 8;
/// The destination half of each MR (the source half is below it).
const DST: u64 = SLOTS * SLOT;
const QKEY: u32 = 0x1111_2222;
const RC: usize = 0;
const UC: usize = 1;
const UD: usize = 2;

/// One guest and its daemon.
struct Vm {
    drv: Driver<VfioBus>,
    daemon: Daemon,
    dir: PathBuf,
    ip: [u8; 4],
    pd: u32,
    cq: Cq,
    mr: Mr,
    qps: Vec<Qp>,
    /// A fast-registration MR of up to 16 pages: (handle, current key).
    frmr: (u32, u32),
    /// What the MR must hold.
    shadow: Vec<u8>,
}

impl Vm {
    fn boot(ns: &Netns, ifname: &str, mac: &str, ip: [u8; 4], tag: &str) -> Vm {
        let dir = std::env::temp_dir().join(format!("vur-vm2vm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (daemon, sock) = pvrdma_daemon(ns, ifname, mac, &dir);
        let bus = VfioBus::attach(&sock, Ram::new(MEM));
        let mut drv = Driver::new(bus, GPA, MEM);
        let (version, caps) = drv.probe(0xfe000).expect("ACTIVATE");
        assert_eq!(version, 20);
        assert_eq!(caps.gid_types, 2, "RoCE v2");
        drv.bind_gid(0, gid_v4(ip)).unwrap();
        let pd = drv.create_pd(0).unwrap();
        let cq = drv.create_cq(512).unwrap();
        // LOCAL_WRITE | REMOTE_WRITE | REMOTE_READ | REMOTE_ATOMIC.
        let va = 0x7f00_0000_0000 + u64::from(ip[3]) * 0x1000_0000;
        let mr = drv.create_mr(pd, va, MR_PAGES, 0xf).unwrap();
        let frmr = drv.create_frmr(pd, 16).unwrap();
        let qps = [2u8, 3, 4]
            .iter()
            .map(|&t| {
                drv.create_qp(&QpSpec {
                    qp_type: t,
                    pd,
                    send_cq: cq.handle,
                    recv_cq: cq.handle,
                    max_send_wr: 32,
                    max_recv_wr: 32,
                    max_send_sge: 4,
                    max_recv_sge: 4,
                    sq_sig_all: false,
                    srq: None,
                })
                .unwrap()
            })
            .collect();
        Vm {
            drv,
            daemon,
            dir,
            ip,
            pd,
            cq,
            mr,
            qps,
            frmr,
            shadow: vec![0; (u64::from(MR_PAGES) * 4096) as usize],
        }
    }

    /// Writes MR bytes at `off`, in guest memory and in the model.
    fn fill(&mut self, off: u64, data: &[u8]) {
        self.shadow[off as usize..off as usize + data.len()].copy_from_slice(data);
        let mut done = 0usize;
        while done < data.len() {
            let at = off + done as u64;
            let n = (4096 - at % 4096).min((data.len() - done) as u64) as usize;
            let gpa = self.mr.gpa(at);
            self.drv.bus.ram.write(gpa, &data[done..done + n]);
            done += n;
        }
    }

    /// The MR's bytes as the guest sees them.
    fn contents(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.shadow.len()];
        for (i, p) in self.mr.pages.iter().enumerate() {
            self.drv
                .bus
                .ram
                .read_into(*p, &mut v[i * 4096..(i + 1) * 4096]);
        }
        v
    }

    fn va(&self, off: u64) -> u64 {
        self.mr.va + off
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Send,
    SendImm,
    Write,
    WriteImm,
    Read,
    CmpSwap,
    FetchAdd,
}

/// A completion the test waits for.
#[derive(Debug, Clone)]
struct Want {
    opcode: u32,
    byte_len: Option<u32>,
    imm: Option<u32>,
    qp: u32,
    src_qp: Option<u32>,
    /// The rkey a SEND_WITH_INV invalidated.
    inv: Option<u32>,
}

/// A send WQE to post: on which VM and QP type, and what.
struct Post {
    vm: usize,
    t: usize,
    wr_id: u64,
    hdr: SqWqeHdr,
    sges: Vec<Sge>,
}

/// A UD receive whose first 40 bytes are the GRH.
struct UdGrh {
    vm: usize,
    pieces: Vec<(u64, u64)>,
    wr_id: u64,
    from: [u8; 4],
}

/// Bytes that land in an MR when a batch completes.
struct Landing {
    vm: usize,
    off: u64,
    data: Vec<u8>,
}

/// `len` bytes laid out as up to four pieces with gaps inside
/// `[base, base + SLOT)`; (offset, length) per piece.
fn pieces(rng: &mut SmallRng, base: u64, len: u64) -> Vec<(u64, u64)> {
    if len == 0 {
        return Vec::new();
    }
    let n = rng.random_range(1..=4u64).min(len);
    let mut cuts: Vec<u64> = (0..n - 1).map(|_| rng.random_range(1..len)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut sizes = Vec::new();
    let mut prev = 0;
    for c in cuts.into_iter().chain([len]) {
        sizes.push(c - prev);
        prev = c;
    }
    let slack = SLOT - len;
    let mut at = base + rng.random_range(0..=slack.min(512));
    let mut left = slack - (at - base);
    sizes
        .into_iter()
        .map(|s| {
            let p = (at, s);
            let gap = rng.random_range(0..=left.min(64));
            left -= gap;
            at += s + gap;
            p
        })
        .collect()
}

fn sges(vm: &Vm, p: &[(u64, u64)]) -> Vec<Sge> {
    p.iter()
        .map(|&(o, l)| sge(vm.va(o), l as u32, vm.mr.lkey))
        .collect()
}

/// Scatters `data` over `p`, after skipping `skip` bytes of it.
fn scatter(vm: usize, p: &[(u64, u64)], mut skip: u64, data: &[u8], out: &mut Vec<Landing>) {
    let mut at = 0usize;
    for &(o, l) in p {
        let s = skip.min(l);
        skip -= s;
        let n = ((l - s) as usize).min(data.len() - at);
        if n > 0 {
            out.push(Landing {
                vm,
                off: o + s,
                data: data[at..at + n].to_vec(),
            });
        }
        at += n;
    }
}

struct Soak {
    rng: SmallRng,
    seed: u64,
    next_id: u64,
    ops: HashMap<&'static str, u64>,
    bytes: u64,
    irqs: u64,
    ud_mtu: u64,
}

impl Soak {
    fn random_len(&mut self, max: u64) -> u64 {
        let r = &mut self.rng;
        if r.random_bool(0.05) {
            return 0;
        }
        let bits = r.random_range(0..=16u32);
        r.random_range(1..=(1u64 << bits)).min(max)
    }

    /// One batch: up to eight operations, each on its own slot, posted
    /// together; waits for every completion and checks everything.
    fn batch(&mut self, vms: &mut [Vm; 2]) -> usize {
        let n = self.rng.random_range(1..=SLOTS);
        let mut want: [HashMap<u64, Want>; 2] = [HashMap::new(), HashMap::new()];
        let mut land = Vec::new();
        // Send WQEs per (vm, qp), in order, and receive WQEs likewise.
        let mut sends: Vec<Post> = Vec::new();
        let mut recvs: Vec<(usize, usize, u64, Vec<Sge>)> = Vec::new();
        // UD receive buffers whose first 40 bytes are the GRH.
        let mut grhs: Vec<UdGrh> = Vec::new();
        for k in 0..n {
            let i = self.rng.random_range(0..2usize);
            let r = 1 - i;
            let t = match self.rng.random_range(0..10) {
                0..7 => RC,
                7..9 => UC,
                _ => UD,
            };
            let kinds: &[Kind] = match t {
                RC => &[
                    Kind::Send,
                    Kind::SendImm,
                    Kind::Write,
                    Kind::WriteImm,
                    Kind::Read,
                    Kind::CmpSwap,
                    Kind::FetchAdd,
                ],
                UC => &[Kind::Send, Kind::SendImm, Kind::Write, Kind::WriteImm],
                _ => &[Kind::Send, Kind::SendImm],
            };
            let kind = kinds[self.rng.random_range(0..kinds.len())];
            let max = match t {
                RC => SLOT,
                UC => 16 << 10,
                _ => self.ud_mtu,
            };
            let len = self.random_len(max);
            let src = k * SLOT;
            let dst = DST + k * SLOT;
            let wr_id = self.next_id;
            self.next_id += 1;
            let imm: u32 = self.rng.random();
            let signaled = !matches!(kind, Kind::Write) || self.rng.random_bool(0.5);
            let (qi, qr) = (&vms[i].qps[t], &vms[r].qps[t]);
            let (qi_handle, qi_qpn, qr_handle, qr_qpn) = (qi.handle, qi.qpn, qr.handle, qr.qpn);
            let name = format!(
                "{}_{}",
                ["rc", "uc", "ud"][t],
                format!("{kind:?}").to_lowercase()
            );
            *self
                .ops
                .entry(Box::leak(name.into_boxed_str()))
                .or_default() += 1;
            self.bytes += len;
            let (wr_opc, wc_opc) = match kind {
                Kind::Send => (wr_opcode::SEND, wc_opcode::SEND),
                Kind::SendImm => (wr_opcode::SEND_WITH_IMM, wc_opcode::SEND),
                Kind::Write => (wr_opcode::RDMA_WRITE, wc_opcode::RDMA_WRITE),
                Kind::WriteImm => (wr_opcode::RDMA_WRITE_WITH_IMM, wc_opcode::RDMA_WRITE),
                Kind::Read => (wr_opcode::RDMA_READ, wc_opcode::RDMA_READ),
                Kind::CmpSwap => (wr_opcode::ATOMIC_CMP_AND_SWP, wc_opcode::COMP_SWAP),
                Kind::FetchAdd => (wr_opcode::ATOMIC_FETCH_AND_ADD, wc_opcode::FETCH_ADD),
            };
            let mut hdr = send_wqe(wr_id, wr_opc, signaled);
            if matches!(kind, Kind::SendImm | Kind::WriteImm) {
                hdr.ex = imm.to_be_bytes();
            }
            let has_imm = matches!(kind, Kind::SendImm | Kind::WriteImm);
            let local = match kind {
                Kind::Send | Kind::SendImm => {
                    let (data, sp) = self.source(&mut vms[i], src, len);
                    let grh = if t == UD { 40 } else { 0 };
                    let room = (len + grh + self.rng.random_range(0..=64)).min(SLOT);
                    let rp = pieces(&mut self.rng, dst, room);
                    scatter(r, &rp, grh, &data, &mut land);
                    if t == UD {
                        grhs.push(UdGrh {
                            vm: r,
                            pieces: rp.clone(),
                            wr_id,
                            from: vms[i].ip,
                        });
                        hdr = with_ud(hdr, vms[i].pd, qr_qpn, QKEY, gid_v4(vms[r].ip));
                    }
                    recvs.push((r, t, wr_id, sges(&vms[r], &rp)));
                    want[r].insert(
                        wr_id,
                        Want {
                            opcode: wc_opcode::RECV,
                            byte_len: Some((len + grh) as u32),
                            imm: has_imm.then_some(imm),
                            qp: qr_handle,
                            src_qp: (t == UD).then_some(qi_qpn),
                            inv: None,
                        },
                    );
                    sges(&vms[i], &sp)
                }
                Kind::Write | Kind::WriteImm => {
                    let (data, sp) = self.source(&mut vms[i], src, len);
                    let roff = dst + self.rng.random_range(0..=SLOT - len);
                    land.push(Landing {
                        vm: r,
                        off: roff,
                        data,
                    });
                    hdr = with_rdma(hdr, vms[r].va(roff), vms[r].mr.rkey);
                    if has_imm {
                        recvs.push((r, t, wr_id, Vec::new()));
                        want[r].insert(
                            wr_id,
                            Want {
                                opcode: wc_opcode::RECV_RDMA_WITH_IMM,
                                byte_len: Some(len as u32),
                                imm: Some(imm),
                                qp: qr_handle,
                                src_qp: None,
                                inv: None,
                            },
                        );
                    }
                    sges(&vms[i], &sp)
                }
                Kind::Read => {
                    let data: Vec<u8> = (0..len).map(|_| self.rng.random()).collect();
                    let roff = src + self.rng.random_range(0..=SLOT - len);
                    vms[r].fill(roff, &data);
                    let lp = pieces(&mut self.rng, dst, len);
                    scatter(i, &lp, 0, &data, &mut land);
                    hdr = with_rdma(hdr, vms[r].va(roff), vms[r].mr.rkey);
                    sges(&vms[i], &lp)
                }
                Kind::CmpSwap | Kind::FetchAdd => {
                    let roff = dst + 8 * self.rng.random_range(0..SLOT / 8);
                    let loff = dst + 8 * self.rng.random_range(0..SLOT / 8);
                    let old = u64::from_le_bytes(
                        vms[r].shadow[roff as usize..roff as usize + 8]
                            .try_into()
                            .unwrap(),
                    );
                    let (a, b): (u64, u64) = (self.rng.random(), self.rng.random());
                    let (cmp_add, swap, new) = if kind == Kind::FetchAdd {
                        (a, 0, old.wrapping_add(a))
                    } else if self.rng.random_bool(0.5) {
                        (old, b, b)
                    } else {
                        (a, b, if a == old { b } else { old })
                    };
                    land.push(Landing {
                        vm: r,
                        off: roff,
                        data: new.to_le_bytes().to_vec(),
                    });
                    land.push(Landing {
                        vm: i,
                        off: loff,
                        data: old.to_le_bytes().to_vec(),
                    });
                    hdr = with_atomic(hdr, vms[r].va(roff), vms[r].mr.rkey, cmp_add, swap);
                    sges(&vms[i], &[(loff, 8)])
                }
            };
            sends.push(Post {
                vm: i,
                t,
                wr_id,
                hdr,
                sges: local,
            });
            if signaled {
                want[i].insert(
                    wr_id,
                    Want {
                        opcode: wc_opc,
                        byte_len: matches!(kind, Kind::Read).then_some(len as u32),
                        imm: None,
                        qp: qi_handle,
                        src_qp: None,
                        inv: None,
                    },
                );
            }
        }
        // The last WRITE on each send queue is signaled, so its completion
        // covers the unsignaled ones before it.
        for v in 0..2 {
            for t in 0..3 {
                if let Some(s) = sends.iter_mut().rev().find(|s| s.vm == v && s.t == t)
                    && s.hdr.send_flags.get() & 2 == 0
                {
                    s.hdr.send_flags = 2.into();
                    want[v].insert(
                        s.wr_id,
                        Want {
                            opcode: wc_opcode::RDMA_WRITE,
                            byte_len: None,
                            imm: None,
                            qp: vms[v].qps[t].handle,
                            src_qp: None,
                            inv: None,
                        },
                    );
                }
            }
        }
        // Receives first (one doorbell per queue), then the sends.
        for (v, t, id, s) in &recvs {
            let vm = &mut vms[*v];
            vm.drv.post_recv(&mut vm.qps[*t], *id, s);
        }
        for (v, vm) in vms.iter_mut().enumerate() {
            for t in 0..3 {
                if recvs.iter().any(|r| r.0 == v && r.1 == t) {
                    vm.drv.ring_rq(&vm.qps[t]);
                }
            }
        }
        for s in &sends {
            let vm = &mut vms[s.vm];
            vm.drv.post_send(&mut vm.qps[s.t], &s.hdr, &s.sges);
        }
        for (v, vm) in vms.iter_mut().enumerate() {
            for t in 0..3 {
                if sends.iter().any(|s| s.vm == v && s.t == t) {
                    vm.drv.ring_sq(&vm.qps[t]);
                }
            }
        }
        self.reap(vms, &mut want);
        // UD: the GRH area holds the sender's IPv4 header (rxe's layout:
        // 20 zero bytes, then the header); take it into the model.
        for UdGrh {
            vm: v,
            pieces: p,
            wr_id: id,
            from,
        } in grhs
        {
            let mut grh = Vec::new();
            for &(o, l) in &p {
                let c = vms[v].contents();
                grh.extend_from_slice(&c[o as usize..(o + l) as usize]);
                if grh.len() >= 40 {
                    break;
                }
            }
            grh.truncate(40);
            assert_eq!(grh[20], 0x45, "seed {}: UD {id}: GRH holds IPv4", self.seed);
            assert_eq!(&grh[32..36], &from, "seed {}: UD {id}: source", self.seed);
            let mut at = 0usize;
            for &(o, l) in &p {
                let n = (l as usize).min(40 - at);
                vms[v].shadow[o as usize..o as usize + n].copy_from_slice(&grh[at..at + n]);
                at += n;
                if at == 40 {
                    break;
                }
            }
        }
        for l in land {
            vms[l.vm].shadow[l.off as usize..l.off as usize + l.data.len()]
                .copy_from_slice(&l.data);
        }
        self.check_memory(vms);
        n as usize
    }

    /// `len` fresh random bytes written into `vm`'s MR as up to four
    /// pieces inside the slot at `base`: (the bytes, the pieces).
    fn source(&mut self, vm: &mut Vm, base: u64, len: u64) -> (Vec<u8>, Vec<(u64, u64)>) {
        let data: Vec<u8> = (0..len).map(|_| self.rng.random()).collect();
        let sp = pieces(&mut self.rng, base, len);
        let mut at = 0usize;
        for &(o, l) in &sp {
            vm.fill(o, &data[at..at + l as usize]);
            at += l as usize;
        }
        (data, sp)
    }

    fn count(&mut self, name: &'static str) {
        *self.ops.entry(name).or_default() += 1;
    }

    /// Posts one signaled send WQE on `vm`'s RC QP, rings, and returns
    /// its wr_id.
    fn post_rc(&mut self, vm: &mut Vm, hdr: SqWqeHdr, sges: &[Sge]) {
        vm.drv.post_send(&mut vm.qps[RC], &hdr, sges);
        vm.drv.ring_sq(&vm.qps[RC]);
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The kernel verbs on RC, in order (each waits for the last): R maps
    /// its FRMR with FAST_REG_MR over up to 16 pages of its destination
    /// half in a random order under a new key; I WRITEs through that key
    /// and READs back through it; then either I's SEND_WITH_INV or R's
    /// LOCAL_INV retires the key. Returns (I, R, the retired key, iova).
    fn frmr_round(&mut self, vms: &mut [Vm; 2]) -> (usize, usize, u32, u64) {
        let i = self.rng.random_range(0..2usize);
        let r = 1 - i;
        let m = self.rng.random_range(1..=16u64);
        let mut idx: Vec<u64> = (0..16).collect();
        idx.shuffle(&mut self.rng);
        idx.truncate(m as usize);
        let list: Vec<u64> = idx.iter().map(|j| vms[r].mr.gpa(DST + j * 4096)).collect();
        let pl_dir = vms[r].drv.page_dir(&list);
        let (_, old) = vms[r].frmr;
        let key = (old & !0xff) | (old.wrapping_add(1) & 0xff);
        vms[r].frmr.1 = key;
        let iova = 0x4000_0000_0000 + self.rng.random_range(0..1u64 << 20) * 4096;
        // MR byte offset of iova offset `o`.
        let at = |o: u64| DST + idx[(o / 4096) as usize] * 4096 + o % 4096;
        let span = |o: u64, len: u64, data: &[u8], out: &mut Vec<Landing>, vm: usize| {
            let mut done = 0u64;
            while done < len {
                let n = (4096 - (o + done) % 4096).min(len - done);
                out.push(Landing {
                    vm,
                    off: at(o + done),
                    data: data[done as usize..(done + n) as usize].to_vec(),
                });
                done += n;
            }
        };
        let mut want: [HashMap<u64, Want>; 2] = [HashMap::new(), HashMap::new()];
        let plain = |opcode: u32, qp: u32| Want {
            opcode,
            byte_len: None,
            imm: None,
            qp,
            src_qp: None,
            inv: None,
        };

        // FAST_REG_MR on R: LOCAL_WRITE | REMOTE_WRITE | REMOTE_READ.
        let id = self.id();
        let h = with_fast_reg(
            send_wqe(id, wr_opcode::FAST_REG_MR, true),
            iova,
            pl_dir,
            12,
            m as u32,
            (m * 4096) as u32,
            7,
            key,
        );
        self.post_rc(&mut vms[r], h, &[]);
        want[r].insert(id, plain(wc_opcode::FAST_REG_MR, vms[r].qps[RC].handle));
        self.reap(vms, &mut want);
        self.count("rc_fastreg");

        // WRITE through the new key.
        let len = self.rng.random_range(1..=m * 4096);
        let off = self.rng.random_range(0..=m * 4096 - len);
        let (data, sp) = self.source(&mut vms[i], 0, len);
        let mut land = Vec::new();
        span(off, len, &data, &mut land, r);
        let id = self.id();
        let h = with_rdma(send_wqe(id, wr_opcode::RDMA_WRITE, true), iova + off, key);
        let g = sges(&vms[i], &sp);
        self.post_rc(&mut vms[i], h, &g);
        want[i].insert(id, plain(wc_opcode::RDMA_WRITE, vms[i].qps[RC].handle));
        self.reap(vms, &mut want);
        self.apply(vms, land);
        self.count("rc_write_frmr");
        self.bytes += len;

        // READ back a random span of the mapped pages into I.
        let len = self.rng.random_range(1..=m * 4096);
        let off = self.rng.random_range(0..=m * 4096 - len);
        let expect: Vec<u8> = (off..off + len)
            .map(|o| vms[r].shadow[at(o) as usize])
            .collect();
        let lp = pieces(&mut self.rng, DST + SLOT, len);
        let mut land = Vec::new();
        scatter(i, &lp, 0, &expect, &mut land);
        let id = self.id();
        let h = with_rdma(send_wqe(id, wr_opcode::RDMA_READ, true), iova + off, key);
        let g = sges(&vms[i], &lp);
        self.post_rc(&mut vms[i], h, &g);
        want[i].insert(
            id,
            Want {
                byte_len: Some(len as u32),
                ..plain(wc_opcode::RDMA_READ, vms[i].qps[RC].handle)
            },
        );
        self.reap(vms, &mut want);
        self.apply(vms, land);
        self.count("rc_read_frmr");
        self.bytes += len;

        // Retire the key: remotely (SEND_WITH_INV) or locally.
        let id = self.id();
        let mut land = Vec::new();
        if self.rng.random_bool(0.5) {
            let len = self.rng.random_range(0..=256u64);
            let data: Vec<u8> = (0..len).map(|_| self.rng.random()).collect();
            vms[i].fill(2 * SLOT, &data);
            let rp = pieces(&mut self.rng, DST + 2 * SLOT, len + 16);
            scatter(r, &rp, 0, &data, &mut land);
            let g = sges(&vms[r], &rp);
            let vm = &mut vms[r];
            vm.drv.post_recv(&mut vm.qps[RC], id, &g);
            vm.drv.ring_rq(&vm.qps[RC]);
            want[r].insert(
                id,
                Want {
                    byte_len: Some(len as u32),
                    inv: Some(key),
                    ..plain(wc_opcode::RECV, vms[r].qps[RC].handle)
                },
            );
            let h = with_invalidate(send_wqe(id, wr_opcode::SEND_WITH_INV, true), key);
            let g = if len == 0 {
                Vec::new()
            } else {
                vec![sge(vms[i].va(2 * SLOT), len as u32, vms[i].mr.lkey)]
            };
            self.post_rc(&mut vms[i], h, &g);
            want[i].insert(id, plain(wc_opcode::SEND, vms[i].qps[RC].handle));
            self.count("rc_sendinv");
        } else {
            let h = with_invalidate(send_wqe(id, wr_opcode::LOCAL_INV, true), key);
            self.post_rc(&mut vms[r], h, &[]);
            want[r].insert(id, plain(wc_opcode::LOCAL_INV, vms[r].qps[RC].handle));
            self.count("rc_localinv");
        }
        self.reap(vms, &mut want);
        self.apply(vms, land);
        self.check_memory(vms);
        (i, r, key, iova)
    }

    fn apply(&self, vms: &mut [Vm; 2], land: Vec<Landing>) {
        for l in land {
            vms[l.vm].shadow[l.off as usize..l.off as usize + l.data.len()]
                .copy_from_slice(&l.data);
        }
    }

    /// Polls both CQs (sleeping on the CQ vector, armed) until every
    /// wanted completion arrived; any other completion fails.
    fn reap(&mut self, vms: &mut [Vm; 2], want: &mut [HashMap<u64, Want>; 2]) {
        let t0 = Instant::now();
        let mut got = Vec::new();
        while want.iter().any(|w| !w.is_empty()) {
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "seed {}: completions never came: {want:?}",
                self.seed
            );
            let mut any = false;
            for (v, (vm, w)) in vms.iter_mut().zip(want.iter_mut()).enumerate() {
                got.clear();
                vm.drv.poll_cq(&vm.cq, 64, &mut got);
                for c in &got {
                    any = true;
                    self.check_cqe(v, c, w);
                }
            }
            if !any {
                // Arm, then sleep on the CQ vector; a completion that
                // raced the arm is found on the next pass.
                for (vm, w) in vms.iter_mut().zip(want.iter()) {
                    if !w.is_empty() {
                        vm.drv.arm_cq(&vm.cq, false);
                    }
                }
                for (vm, w) in vms.iter().zip(want.iter()) {
                    if !w.is_empty() && vm.drv.bus.wait_irq(2, 20) {
                        self.irqs += 1;
                    }
                }
            }
        }
    }

    fn check_cqe(&self, v: usize, c: &Cqe, want: &mut HashMap<u64, Want>) {
        let id = c.wr_id.get();
        let Some(w) = want.remove(&id) else {
            panic!("seed {}: vm {v}: unexpected completion {c:?}", self.seed);
        };
        let ctx = format!("seed {}: vm {v}: wr {id}: {c:?} wanted {w:?}", self.seed);
        assert_eq!(c.status.get(), 0, "{ctx}");
        assert_eq!(c.opcode.get(), w.opcode, "{ctx}");
        assert_eq!(c.qp.get(), u64::from(w.qp), "{ctx}");
        if let Some(n) = w.byte_len {
            assert_eq!(c.byte_len.get(), n, "{ctx}");
        }
        // IB_WC_WITH_IMM is bit 1 of wc_flags.
        assert_eq!(c.wc_flags.get() & 2 != 0, w.imm.is_some(), "{ctx}");
        if let Some(imm) = w.imm {
            assert_eq!(c.imm_data, imm.to_be_bytes(), "{ctx}");
        }
        // IB_WC_WITH_INVALIDATE is bit 2; the key rides in imm_data.
        assert_eq!(c.wc_flags.get() & 4 != 0, w.inv.is_some(), "{ctx}");
        if let Some(key) = w.inv {
            assert_eq!(c.imm_data, key.to_be_bytes(), "{ctx}");
        }
        if let Some(q) = w.src_qp {
            // A UD receive: the source QP, IB_WC_GRH (bit 0) and the
            // network header type (IPv4) the guest reads the GRH by.
            assert_eq!(c.src_qp.get(), q, "{ctx}");
            assert_eq!(c.wc_flags.get() & 1, 1, "{ctx}");
            assert_eq!(c.network_hdr_type, 1, "{ctx}");
        }
    }

    /// Every byte of both MRs equals the model. An initiator completes a
    /// UC WRITE when it is sent, so its bytes may land a little later:
    /// look again for up to two seconds before failing.
    fn check_memory(&self, vms: &[Vm; 2]) {
        let t0 = Instant::now();
        for (v, vm) in vms.iter().enumerate() {
            loop {
                let c = vm.contents();
                let Some(at) = c.iter().zip(&vm.shadow).position(|(a, b)| a != b) else {
                    break;
                };
                assert!(
                    t0.elapsed() < Duration::from_secs(2),
                    "seed {}: vm {v}: MR byte {at:#x} is {:#04x}, the model says {:#04x}",
                    self.seed,
                    c[at],
                    vm.shadow[at]
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn connect(vms: &mut [Vm; 2], rng: &mut SmallRng) -> (u32, [u32; 2]) {
    let mtu = rng.random_range(1..=5u32);
    // PSNs within 64 of the 24-bit wrap half of the time.
    let psn = |rng: &mut SmallRng| {
        if rng.random_bool(0.5) {
            0xff_ffff - rng.random_range(0..64)
        } else {
            rng.random_range(0..0x100_0000)
        }
    };
    let psns = [psn(rng), psn(rng)];
    for t in [RC, UC] {
        for v in 0..2 {
            let (me, peer) = (vms[v].qps[t].handle, vms[1 - v].qps[t].qpn);
            let dgid = gid_v4(vms[1 - v].ip);
            vms[v]
                .drv
                .connect(me, t == RC, peer, dgid, mtu, psns[v], psns[1 - v])
                .unwrap();
        }
    }
    for vm in vms.iter_mut() {
        let h = vm.qps[UD].handle;
        vm.drv.ud_ready(h, QKEY).unwrap();
    }
    (mtu, psns)
}

#[test]
fn two_guests_soak_rc_uc_ud_through_two_daemons_over_veth() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pid = std::process::id();
    let nsa = Netns::new(format!("vur-v2v-a-{pid}"));
    let nsb = Netns::new(format!("vur-v2v-b-{pid}"));
    let (ia, ib) = (
        format!("v2va{}", pid % 100_000),
        format!("v2vb{}", pid % 100_000),
    );
    sh(&[
        "ip", "link", "add", &ia, "netns", &nsa.0, "mtu", "9000", "type", "veth", "peer", "name",
        &ib, "netns", &nsb.0, "mtu", "9000",
    ]);
    sh(&["ip", "-n", &nsa.0, "link", "set", &ia, "up"]);
    sh(&["ip", "-n", &nsb.0, "link", "set", &ib, "up"]);
    let mut vms = [
        Vm::boot(&nsa, &ia, "52:54:00:5a:00:01", [10, 88, 0, 1], "a"),
        Vm::boot(&nsb, &ib, "52:54:00:5a:00:02", [10, 88, 0, 2], "b"),
    ];
    let seed = env_u64("VUR_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    eprintln!("vm-to-vm soak seed {seed} (VUR_SOAK_SEED={seed} repeats it)");
    let mut rng = SmallRng::seed_from_u64(seed);
    let (mtu, psns) = connect(&mut vms, &mut rng);
    let mut soak = Soak {
        rng,
        seed,
        next_id: 1,
        ops: HashMap::new(),
        bytes: 0,
        irqs: 0,
        ud_mtu: 1024,
    };
    let max_ops = env_u64("VUR_SOAK_OPS").unwrap_or(3000);
    let max_secs = env_u64("VUR_SOAK_SECS").unwrap_or(30);
    let t0 = Instant::now();
    // First an FRMR round, which is all RC: it resolves both daemons'
    // neighbours (the responder learns from the ARP request). A UC or UD
    // packet that found its neighbour unresolved could be dropped from the
    // short queue that waits for it, and its completion would never come.
    let mut retired = Some(soak.frmr_round(&mut vms));
    let mut done = 4usize;
    let mut batches = 0u64;
    while (done as u64) < max_ops && t0.elapsed() < Duration::from_secs(max_secs) {
        done += soak.batch(&mut vms);
        batches += 1;
        if batches.is_multiple_of(10) {
            retired = Some(soak.frmr_round(&mut vms));
            done += 4;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut ops: Vec<_> = soak.ops.iter().collect();
    ops.sort();
    println!(
        "{{\"test\":\"pvrdma vm-to-vm soak\",\"seed\":{seed},\"path_mtu\":{},\"psns\":[{},{}],\"ops\":{done},\"bytes\":{},\"secs\":{secs:.1},\"cq_interrupts\":{},\"by_op\":{{{}}}}}",
        128u32 << mtu,
        psns[0],
        psns[1],
        soak.bytes,
        soak.irqs,
        ops.iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(done >= 200, "only {done} operations in {secs:.0} s");
    for k in [
        "rc_send",
        "rc_sendimm",
        "rc_write",
        "rc_writeimm",
        "rc_read",
        "rc_cmpswap",
        "rc_fetchadd",
        "uc_send",
        "uc_write",
        "ud_send",
        "rc_fastreg",
        "rc_write_frmr",
        "rc_read_frmr",
    ] {
        assert!(
            soak.ops.get(k).copied().unwrap_or(0) > 0,
            "no {k} in the run"
        );
    }
    assert!(soak.irqs > 0, "the CQ vector never fired");

    figures(&mut vms, 128u32 << mtu);

    // Last, a WRITE through a retired FRMR key: the initiator completes
    // with a remote access error, and both RC QPs end in ERR, as on rxe
    // (which, like us, raises no QP_ACCESS_ERR event for it).
    let (i, _r, key, iova) = retired.expect("at least one FRMR round");
    let id = soak.id();
    let h = with_rdma(send_wqe(id, wr_opcode::RDMA_WRITE, true), iova, key);
    let g = [sge(vms[i].va(0), 64, vms[i].mr.lkey)];
    soak.post_rc(&mut vms[i], h, &g);
    let t = Instant::now();
    let mut c = Vec::new();
    loop {
        assert!(t.elapsed() < Duration::from_secs(5), "no completion");
        c.clear();
        let vm = &mut vms[i];
        vm.drv.poll_cq(&vm.cq, 1, &mut c);
        match c.first() {
            Some(x) if x.wr_id.get() != id => {
                // A SEND of the latency run (wr_id 4 << 40 or 5 << 40 | n)
                // whose ACK came after figures() stopped waiting.
                assert!(
                    matches!(x.wr_id.get() >> 40, 4 | 5) && x.status.get() == 0,
                    "{x:?}"
                );
            }
            Some(_) => break,
            None => {}
        }
    }
    assert_eq!(
        (c[0].wr_id.get(), c[0].status.get()),
        (id, 10),
        "{:?}",
        c[0]
    );
    for vm in &mut vms {
        let h = vm.qps[RC].handle;
        assert_eq!(
            vm.drv.query_qp(h).unwrap().qp_state.get(),
            6,
            "RC QP in ERR"
        );
    }

    // The daemons agree on what went over the wire and saw nothing bad.
    for vm in &vms {
        let out = Command::new(BIN)
            .args(["stats", "--json"])
            .arg(vm.dir.join("ctl.sock"))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
        let l = &v["rdma"]["link"];
        assert_eq!(l["icrc_err"], 0, "{v}");
        assert_eq!(l["send_err"], 0, "{v}");
        assert_eq!(v["rdma"]["objects"]["qps"], 3, "{v}");
    }
    for vm in &mut vms {
        assert_eq!(vm.daemon.stop(), Some(0), "clean exit");
        let _ = std::fs::remove_dir_all(&vm.dir);
    }
}

/// The link under a daemon vanishes while its guest has an RC QP with
/// receives posted: as when rxe's netdev goes away, the PVRDMA port goes
/// down (QUERY_PORT says DOWN), the QP moves to ERR and its receives
/// complete with FLUSH_ERR, and the guest's async ring gets a fatal event
/// for the QP and a port error. The daemon says so in its log, stays up
/// and keeps answering the guest's commands.
#[test]
fn a_vanished_link_takes_the_port_down_under_the_guest() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let pid = std::process::id();
    let nsa = Netns::new(format!("vur-ld-a-{pid}"));
    let nsb = Netns::new(format!("vur-ld-b-{pid}"));
    let (ia, ib) = (
        format!("ldva{}", pid % 100_000),
        format!("ldvb{}", pid % 100_000),
    );
    sh(&[
        "ip", "link", "add", &ia, "netns", &nsa.0, "type", "veth", "peer", "name", &ib, "netns",
        &nsb.0,
    ]);
    sh(&["ip", "-n", &nsa.0, "link", "set", &ia, "up"]);
    sh(&["ip", "-n", &nsb.0, "link", "set", &ib, "up"]);
    let mut vms = [
        Vm::boot(&nsa, &ia, "52:54:00:5b:00:01", [10, 89, 0, 1], "lda"),
        Vm::boot(&nsb, &ib, "52:54:00:5b:00:02", [10, 89, 0, 2], "ldb"),
    ];
    connect(&mut vms, &mut SmallRng::seed_from_u64(7));
    let a = &mut vms[0];
    assert_eq!(a.drv.port_state().unwrap(), 4, "port ACTIVE");
    assert!(a.drv.poll_async().is_empty(), "no event yet");
    for id in 0..4u64 {
        let s = [sge(a.va(64 * id), 64, a.mr.lkey)];
        a.drv.post_recv(&mut a.qps[RC], 900 + id, &s);
    }
    a.drv.ring_rq(&a.qps[RC]);

    // Deleting one end of the pair deletes both.
    sh(&["ip", "-n", &nsa.0, "link", "del", &ia]);
    let rc = a.qps[RC].handle;
    let t = Instant::now();
    let mut events = Vec::new();
    while !events.contains(&(event::PORT_ERR, 1)) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no port error within 10 s; events {events:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
        events.extend(a.drv.poll_async());
    }
    assert!(
        events.contains(&(event::QP_FATAL, rc)),
        "a fatal event for the RC QP: {events:?}"
    );
    assert_eq!(a.drv.port_state().unwrap(), 1, "port DOWN");
    assert_eq!(
        a.drv.query_qp(rc).unwrap().qp_state.get(),
        6,
        "RC QP in ERR"
    );
    let mut c = Vec::new();
    let t = Instant::now();
    while c.len() < 4 {
        assert!(t.elapsed() < Duration::from_secs(5), "flushed: {c:?}");
        a.drv.poll_cq(&a.cq, 8, &mut c);
    }
    let mut got: Vec<(u64, u32)> = c.iter().map(|c| (c.wr_id.get(), c.status.get())).collect();
    got.sort();
    assert_eq!(
        got,
        (900..904).map(|i| (i, 5)).collect::<Vec<_>>(),
        "FLUSH_ERR"
    );
    // Still serving: the guest tears its QP down.
    a.drv.destroy(code::DESTROY_QP, rc).unwrap();
    let log = std::fs::read_to_string(a.dir.join("daemon.log")).unwrap();
    assert!(log.contains("went down or vanished"), "{log}");
    for vm in &mut vms {
        assert_eq!(vm.daemon.stop(), Some(0), "clean exit");
        let _ = std::fs::remove_dir_all(&vm.dir);
    }
}

/// RC WRITE bandwidth (64 KiB, 8 in flight) and SEND ping-pong latency
/// (64 B) from A to B, next to the engine alone on a memory link.
fn figures(vms: &mut [Vm; 2], path_mtu: u32) {
    let (a, b) = vms.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    let mut cqes = Vec::new();
    let drain = |vm: &mut Vm, cqes: &mut Vec<Cqe>| {
        cqes.clear();
        vm.drv.poll_cq(&vm.cq, 64, cqes);
        for c in cqes.iter() {
            assert_eq!(c.status.get(), 0, "{c:?}");
        }
        cqes.len()
    };
    let total = 1000u32;
    let (mut posted, mut done) = (0u32, 0u32);
    let t0 = Instant::now();
    while done < total {
        assert!(t0.elapsed() < Duration::from_secs(60), "WRITEs stalled");
        let mut rang = false;
        while posted < total && posted - done < 8 {
            let h = with_rdma(
                send_wqe(1 << 40 | u64::from(posted), wr_opcode::RDMA_WRITE, true),
                b.va(DST),
                b.mr.rkey,
            );
            let s = [sge(a.va(0), SLOT as u32, a.mr.lkey)];
            a.drv.post_send(&mut a.qps[RC], &h, &s);
            posted += 1;
            rang = true;
        }
        if rang {
            a.drv.ring_sq(&a.qps[RC]);
        }
        done += drain(a, &mut cqes) as u32;
    }
    let bw = f64::from(total) * SLOT as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e9;

    // Ping-pong: A sends 64 B, B's receive completes, B answers.
    let mut lat = Vec::new();
    let pre = |vm: &mut Vm, id: u64| {
        let s = [sge(vm.va(DST), 64, vm.mr.lkey)];
        vm.drv.post_recv(&mut vm.qps[RC], id, &s);
        vm.drv.ring_rq(&vm.qps[RC]);
    };
    let send = |vm: &mut Vm, id: u64| {
        let s = [sge(vm.va(0), 64, vm.mr.lkey)];
        let h = send_wqe(id, wr_opcode::SEND, true);
        vm.drv.post_send(&mut vm.qps[RC], &h, &s);
        vm.drv.ring_sq(&vm.qps[RC]);
    };
    let wait_recv = |vm: &mut Vm, cqes: &mut Vec<Cqe>| {
        let t = Instant::now();
        loop {
            assert!(t.elapsed() < Duration::from_secs(5), "ping-pong stalled");
            drain(vm, cqes);
            if cqes.iter().any(|c| c.opcode.get() == wc_opcode::RECV) {
                return;
            }
        }
    };
    for i in 0..300u64 {
        pre(a, 2 << 40 | i);
        pre(b, 3 << 40 | i);
        let t = Instant::now();
        send(a, 4 << 40 | i);
        wait_recv(b, &mut cqes);
        send(b, 5 << 40 | i);
        wait_recv(a, &mut cqes);
        lat.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
    }
    // The last SEND completions.
    std::thread::sleep(Duration::from_millis(50));
    drain(a, &mut cqes);
    drain(b, &mut cqes);
    lat.sort_by(f64::total_cmp);

    let engine = |test: &str, size: &str, key: &str| -> String {
        let out = Command::new(BIN)
            .args(["perf", "--link", "memory", "--test", test])
            .args(["--min-size", size, "--max-size", size, "--seconds", "0.3"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.split(&format!("\"{key}\":")).nth(1).map(str::to_string))
            .and_then(|v| v.split([',', '}']).next().map(str::to_string))
            .unwrap_or_else(|| "null".into())
    };
    println!(
        "{{\"bench\":\"pvrdma vm-to-vm RC WRITE 64 KiB, two daemons over veth\",\"path_mtu\":{path_mtu},\"gbit_per_s\":{bw:.3},\"messages\":{total},\"engine_only_memory_link_gbit_per_s\":{}}}",
        engine("write", "65536", "gbit_per_s")
    );
    println!(
        "{{\"bench\":\"pvrdma vm-to-vm RC SEND 64 B ping-pong, half round trip\",\"lat_us_p50\":{:.1},\"lat_us_p99\":{:.1},\"engine_only_memory_link_lat_us_p50\":{}}}",
        lat[150],
        lat[296],
        engine("lat", "64", "lat_us_p50")
    );
}
