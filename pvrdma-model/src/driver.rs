//! A model of the guest side of the device: the stock `vmw_pvrdma` kernel
//! driver plus rdma-core's `vmw_pvrdma` provider, as tests need them.
//!
//! This module owns the driver's half of the interface, written from the
//! driver's point of view and over a [`Bus`], so the same steps drive the
//! in-process [`crate::device::Device`] and a daemon across vfio-user:
//! the probe (VERSION, the DSR with its async and CQ-notification rings,
//! IMR, ACTIVATE), every command through the command and response slots,
//! page directories over scattered guest pages, and the data path through
//! rings in guest memory and doorbells in BAR2 (send and receive WQEs
//! with any number of SGEs, CQ polling with the consumer index, arming).
//! It checks nothing about the device; tests do. Built for tests only
//! (`cfg(test)` or the `driver-model` feature).

use zerocopy::{FromBytes, IntoBytes};

use crate::{
    abi::{
        CMD_SLOT_LEN, CmdHdr, Cqe, DSR_CAPS_OFFSET, DeviceCaps, Dsr, PAGE_SIZE, QpAttr,
        RESP_SLOT_LEN, RespHdr, RingPageInfo, RqWqeHdr, Sge, SqWqeHdr,
    },
    cmd::code,
    regs::reg,
    ring::{PDIR_ENTRIES, RingIdx},
};

/// What the driver reaches: BAR1, BAR2 and guest memory. Memory accesses
/// outside guest memory are a bug in the test and may panic.
pub trait Bus {
    /// A 32-bit BAR1 read.
    fn reg_read(&mut self, offset: u64) -> u32;
    /// A 32-bit BAR1 write (the device acts on it before this returns).
    fn reg_write(&mut self, offset: u64, value: u32);
    /// A 32-bit BAR2 (UAR) write: a doorbell.
    fn uar_write(&mut self, offset: u64, value: u32);
    /// Reads guest memory at guest-physical `gpa`.
    fn mem_read(&mut self, gpa: u64, buf: &mut [u8]);
    /// Writes guest memory at guest-physical `gpa`.
    fn mem_write(&mut self, gpa: u64, data: &[u8]);
}

/// A command the device refused: the ERR register and the response
/// header's `err`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The command code.
    pub cmd: u32,
    /// BAR1 ERR after the request.
    pub err_reg: u32,
    /// The response header's `err`.
    pub resp_err: u8,
}

/// A CQ as the driver keeps it.
#[derive(Debug, Clone)]
pub struct Cq {
    /// The device's handle.
    pub handle: u32,
    /// Entries.
    pub entries: u32,
    /// Ring pages: the ring-state page, then the CQEs.
    pub pages: Vec<u64>,
}

/// A registered MR.
#[derive(Debug, Clone)]
pub struct Mr {
    /// The device's handle.
    pub handle: u32,
    /// lkey (= rkey on this device).
    pub lkey: u32,
    /// rkey.
    pub rkey: u32,
    /// The virtual address it was registered at.
    pub va: u64,
    /// Its pages, in order.
    pub pages: Vec<u64>,
}

impl Mr {
    /// The guest-physical address of byte `off` of the MR.
    pub fn gpa(&self, off: u64) -> u64 {
        self.pages[(off / PAGE_SIZE) as usize] + off % PAGE_SIZE
    }
}

/// What CREATE_QP asks for.
#[derive(Debug, Clone, Copy)]
pub struct QpSpec {
    /// 1 GSI, 2 RC, 3 UC, 4 UD.
    pub qp_type: u8,
    /// PD handle.
    pub pd: u32,
    /// Send CQ handle.
    pub send_cq: u32,
    /// Receive CQ handle.
    pub recv_cq: u32,
    /// Send WRs (a power of two).
    pub max_send_wr: u32,
    /// Receive WRs (a power of two).
    pub max_recv_wr: u32,
    /// SGEs per send WQE.
    pub max_send_sge: u32,
    /// SGEs per receive WQE.
    pub max_recv_sge: u32,
    /// Signal every send.
    pub sq_sig_all: bool,
    /// Receive from this SRQ (then the QP has no receive ring).
    pub srq: Option<u32>,
}

/// A QP with the driver's ring indices.
#[derive(Debug, Clone)]
pub struct Qp {
    /// The device's handle (doorbells and commands).
    pub handle: u32,
    /// The QPN on the wire.
    pub qpn: u32,
    /// Ring pages: the ring-state page, the SQ pages, the RQ pages.
    pub pages: Vec<u64>,
    sq: WqeRing,
    rq: WqeRing,
}

/// An SRQ with the driver's producer index.
#[derive(Debug, Clone)]
pub struct Srq {
    /// The device's handle.
    pub handle: u32,
    /// Ring pages: the ring-state page, then the WQEs.
    pub pages: Vec<u64>,
    ring: WqeRing,
}

/// A ring of WQEs in a queue's pages, with the driver's producer index.
#[derive(Debug, Clone)]
struct WqeRing {
    /// Index of the ring's first page in the queue's page list.
    first: usize,
    idx: RingIdx,
    stride: u64,
    prod: u32,
    /// Offsets of the producer and consumer in the ring-state page.
    prod_at: u64,
    cons_at: u64,
}

impl WqeRing {
    fn new(first: usize, wrs: u32, stride: u64, send: bool) -> WqeRing {
        let (prod_at, cons_at) = if send {
            (TX_PROD, TX_CONS)
        } else {
            (RX_PROD, RX_CONS)
        };
        WqeRing {
            first,
            idx: RingIdx::new(wrs),
            stride,
            prod: 0,
            prod_at,
            cons_at,
        }
    }
}

// Ring-state page: the send ring's producer and consumer, then the
// receive ring's (the CQ uses the receive pair).
const TX_PROD: u64 = 0;
const TX_CONS: u64 = 4;
const RX_PROD: u64 = 8;
const RX_CONS: u64 = 12;

/// BAR2 doorbell offsets and bits within a UAR page.
pub mod doorbell {
    /// The QP doorbell's offset.
    pub const QP: u64 = 0;
    /// The CQ doorbell's offset.
    pub const CQ: u64 = 4;
    /// The SRQ doorbell's offset.
    pub const SRQ: u64 = 8;
    /// QP: new send WQEs.
    pub const QP_SEND: u32 = 1 << 30;
    /// QP: new receive WQEs.
    pub const QP_RECV: u32 = 1 << 31;
    /// CQ: arm for the next solicited completion.
    pub const CQ_ARM_SOL: u32 = 1 << 29;
    /// CQ: arm for the next completion.
    pub const CQ_ARM: u32 = 1 << 30;
    /// CQ: the guest found the CQ empty.
    pub const CQ_POLL: u32 = 1 << 31;
}

/// The driver over a bus, with a page allocator over guest memory from
/// `base` (the first pages hold the DSR and the command slots).
pub struct Driver<B> {
    /// The bus.
    pub bus: B,
    next_page: u64,
    end: u64,
    dsr: u64,
    cmd: u64,
    resp: u64,
    /// The UAR page the driver's doorbells go to (0: the kernel's).
    pub uar: u64,
    /// Commands sent so far.
    pub commands: u64,
    /// The async ring's pages (ring state first), once probed.
    async_pages: Vec<u64>,
}

impl<B: Bus> Driver<B> {
    /// A driver owning guest memory `[base, base + len)`.
    pub fn new(bus: B, base: u64, len: u64) -> Driver<B> {
        Driver {
            bus,
            dsr: base,
            cmd: base + PAGE_SIZE,
            resp: base + 2 * PAGE_SIZE,
            next_page: base + 3 * PAGE_SIZE,
            end: base + len,
            uar: 0,
            commands: 0,
            async_pages: Vec::new(),
        }
    }

    /// Where the DSR, the command slot and the response slot are.
    pub fn slots(&self) -> (u64, u64, u64) {
        (self.dsr, self.cmd, self.resp)
    }

    /// `n` contiguous zeroed guest pages.
    pub fn alloc(&mut self, n: u64) -> u64 {
        let p = self.next_page;
        self.next_page += n * PAGE_SIZE;
        assert!(
            self.next_page <= self.end,
            "the test's guest memory is full"
        );
        self.zero(p, n * PAGE_SIZE);
        p
    }

    fn zero(&mut self, mut at: u64, len: u64) {
        let z = [0u8; PAGE_SIZE as usize];
        let end = at + len;
        while at < end {
            let n = (end - at).min(PAGE_SIZE);
            self.bus.mem_write(at, &z[..n as usize]);
            at += n;
        }
    }

    /// `n` pages that are not contiguous (a free page after each).
    pub fn scattered(&mut self, n: u32) -> Vec<u64> {
        (0..n)
            .map(|_| {
                let p = self.alloc(1);
                self.next_page += PAGE_SIZE;
                p
            })
            .collect()
    }

    /// A two-level page directory over `pages`, as the driver builds it:
    /// one directory page whose entries point at tables of 512 entries.
    pub fn page_dir(&mut self, pages: &[u64]) -> u64 {
        let dir = self.alloc(1);
        for (t, chunk) in pages.chunks(PDIR_ENTRIES as usize).enumerate() {
            let table = self.alloc(1);
            self.bus.mem_write(dir + 8 * t as u64, &table.to_le_bytes());
            let raw: Vec<u8> = chunk.iter().flat_map(|p| p.to_le_bytes()).collect();
            self.bus.mem_write(table, &raw);
        }
        dir
    }

    /// Reads a little-endian u32 from guest memory.
    pub fn read_u32(&mut self, gpa: u64) -> u32 {
        let mut b = [0u8; 4];
        self.bus.mem_read(gpa, &mut b);
        u32::from_le_bytes(b)
    }

    /// Reads `len` bytes of guest memory.
    pub fn read(&mut self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.bus.mem_read(gpa, &mut b);
        b
    }

    /// The probe: VERSION, the DSR (with 4-page async and CQ-notification
    /// rings and UAR page `uar_pfn`), IMR unmasked, ACTIVATE. Returns the
    /// device's version and the caps it wrote, or ERR after ACTIVATE.
    pub fn probe(&mut self, uar_pfn: u64) -> Result<(u32, DeviceCaps), u32> {
        let version = self.bus.reg_read(reg::VERSION);
        let async_pages = self.scattered(4);
        let adir = self.page_dir(&async_pages);
        self.async_pages = async_pages;
        let cq_pages = self.scattered(4);
        let cdir = self.page_dir(&cq_pages);
        let dsr = Dsr {
            driver_version: version.min(20).into(),
            gos_info: 0x46.into(),
            cmd_slot_dma: self.cmd.into(),
            resp_slot_dma: self.resp.into(),
            async_ring_pages: RingPageInfo {
                num_pages: 4.into(),
                reserved: 0.into(),
                pdir_dma: adir.into(),
            },
            cq_ring_pages: RingPageInfo {
                num_pages: 4.into(),
                reserved: 0.into(),
                pdir_dma: cdir.into(),
            },
            uar_pfn64: uar_pfn.into(),
            ..Dsr::default()
        };
        self.bus.mem_write(self.dsr, dsr.as_bytes());
        self.bus.reg_write(reg::DSRLOW, self.dsr as u32);
        self.bus.reg_write(reg::DSRHIGH, (self.dsr >> 32) as u32);
        let raw = self.read(self.dsr + DSR_CAPS_OFFSET, size_of::<DeviceCaps>());
        let caps = DeviceCaps::read_from_bytes(&raw).expect("caps size");
        self.bus.reg_write(reg::IMR, 0);
        self.bus.reg_write(reg::CTL, 0);
        match self.bus.reg_read(reg::ERR) {
            0 => Ok((version, caps)),
            e => Err(e),
        }
    }

    /// Sends one command: `req` is the request (header first; the driver
    /// fills the header's code). Returns the response slot.
    pub fn command(&mut self, cmd: u32, req: &[u8]) -> Result<[u8; RESP_SLOT_LEN], Refused> {
        let mut slot = [0u8; CMD_SLOT_LEN];
        slot[..req.len()].copy_from_slice(req);
        let hdr = CmdHdr {
            response: (0x5a00_0000 + self.commands).into(),
            cmd: cmd.into(),
            reserved: 0.into(),
        };
        slot[..16].copy_from_slice(hdr.as_bytes());
        self.commands += 1;
        self.bus.mem_write(self.cmd, &slot);
        self.bus.reg_write(reg::REQUEST, 0);
        let err_reg = self.bus.reg_read(reg::ERR);
        let mut resp = [0u8; RESP_SLOT_LEN];
        self.bus.mem_read(self.resp, &mut resp);
        let rh = RespHdr::read_from_bytes(&resp[..16]).expect("header size");
        if err_reg != 0 || rh.err != 0 {
            return Err(Refused {
                cmd,
                err_reg,
                resp_err: rh.err,
            });
        }
        assert_eq!(rh.ack.get(), code::FIRST_RESP | cmd, "response code");
        assert_eq!(rh.response.get(), hdr.response.get(), "response cookie");
        Ok(resp)
    }

    /// A command given as `(offset, bytes)` pieces of the request slot.
    pub fn command_at(
        &mut self,
        cmd: u32,
        body: &[(usize, &[u8])],
    ) -> Result<[u8; RESP_SLOT_LEN], Refused> {
        let mut slot = [0u8; CMD_SLOT_LEN];
        for (at, b) in body {
            slot[*at..*at + b.len()].copy_from_slice(b);
        }
        self.command(cmd, &slot)
    }

    /// CREATE_BIND: GID `index` = `gid` (RoCE v2).
    pub fn bind_gid(&mut self, index: u32, gid: [u8; 16]) -> Result<(), Refused> {
        self.command_at(
            code::CREATE_BIND,
            &[(24, &index.to_le_bytes()), (28, &gid), (44, &[2])],
        )
        .map(|_| ())
    }

    /// CREATE_PD in context `ctx` (0: the kernel's).
    pub fn create_pd(&mut self, ctx: u32) -> Result<u32, Refused> {
        let r = self.command_at(code::CREATE_PD, &[(16, &ctx.to_le_bytes())])?;
        Ok(u32_at(&r, 16))
    }

    /// CREATE_CQ of `entries` CQEs over fresh scattered pages.
    pub fn create_cq(&mut self, entries: u32) -> Result<Cq, Refused> {
        let n = 1 + (entries * 64).div_ceil(PAGE_SIZE as u32);
        let pages = self.scattered(n);
        let dir = self.page_dir(&pages);
        let r = self.command_at(
            code::CREATE_CQ,
            &[
                (16, &dir.to_le_bytes()),
                (28, &entries.to_le_bytes()),
                (32, &n.to_le_bytes()),
            ],
        )?;
        Ok(Cq {
            handle: u32_at(&r, 16),
            entries: u32_at(&r, 20),
            pages,
        })
    }

    /// CREATE_MR of `npages` scattered pages at virtual address `va` with
    /// IB `access` flags.
    pub fn create_mr(&mut self, pd: u32, va: u64, npages: u32, access: u32) -> Result<Mr, Refused> {
        let pages = self.scattered(npages);
        self.register(pd, va, &pages, access)
    }

    /// CREATE_MR over the given pages.
    pub fn register(
        &mut self,
        pd: u32,
        va: u64,
        pages: &[u64],
        access: u32,
    ) -> Result<Mr, Refused> {
        let dir = self.page_dir(pages);
        let len = pages.len() as u64 * PAGE_SIZE;
        let r = self.command_at(
            code::CREATE_MR,
            &[
                (16, &va.to_le_bytes()),
                (24, &len.to_le_bytes()),
                (32, &dir.to_le_bytes()),
                (40, &pd.to_le_bytes()),
                (44, &access.to_le_bytes()),
                (52, &(pages.len() as u32).to_le_bytes()),
            ],
        )?;
        Ok(Mr {
            handle: u32_at(&r, 16),
            lkey: u32_at(&r, 20),
            rkey: u32_at(&r, 24),
            va,
            pages: pages.to_vec(),
        })
    }

    /// CREATE_MR of a fast-registration MR (kernel) for up to
    /// `max_pages` pages: (handle, key). A FAST_REG_MR WQE
    /// ([`with_fast_reg`]) maps it later.
    pub fn create_frmr(&mut self, pd: u32, max_pages: u32) -> Result<(u32, u32), Refused> {
        let r = self.command_at(
            code::CREATE_MR,
            &[
                (40, &pd.to_le_bytes()),
                (48, &2u32.to_le_bytes()),
                (52, &max_pages.to_le_bytes()),
            ],
        )?;
        Ok((u32_at(&r, 16), u32_at(&r, 20)))
    }

    /// CREATE_QP with rings sized as the provider sizes them: WQE strides
    /// rounded up to a power of two, whole pages per ring, the ring-state
    /// page first.
    pub fn create_qp(&mut self, s: &QpSpec) -> Result<Qp, Refused> {
        let sq_stride = u64::from(80 + 16 * s.max_send_sge).next_power_of_two();
        let rq_stride = u64::from(16 + 16 * s.max_recv_sge).next_power_of_two();
        let sq_pages = (u64::from(s.max_send_wr) * sq_stride).div_ceil(PAGE_SIZE);
        let rq_pages = if s.srq.is_some() {
            0
        } else {
            (u64::from(s.max_recv_wr) * rq_stride).div_ceil(PAGE_SIZE)
        };
        let total = 1 + sq_pages + rq_pages;
        let pages = self.scattered(total as u32);
        let dir = self.page_dir(&pages);
        let r = self.command_at(
            code::CREATE_QP,
            &[
                (16, &dir.to_le_bytes()),
                (24, &s.pd.to_le_bytes()),
                (28, &s.send_cq.to_le_bytes()),
                (32, &s.recv_cq.to_le_bytes()),
                (36, &s.srq.unwrap_or(0).to_le_bytes()),
                (40, &s.max_send_wr.to_le_bytes()),
                (44, &s.max_recv_wr.to_le_bytes()),
                (48, &s.max_send_sge.to_le_bytes()),
                (52, &s.max_recv_sge.to_le_bytes()),
                (68, &(total as u16).to_le_bytes()),
                (70, &(sq_pages as u16).to_le_bytes()),
                (74, &[u8::from(s.sq_sig_all)]),
                (75, &[s.qp_type]),
                (76, &[u8::from(s.srq.is_some())]),
            ],
        )?;
        Ok(Qp {
            qpn: u32_at(&r, 16),
            handle: u32_at(&r, 20),
            pages,
            sq: WqeRing::new(1, s.max_send_wr, sq_stride, true),
            rq: WqeRing::new(1 + sq_pages as usize, s.max_recv_wr, rq_stride, false),
        })
    }

    /// MODIFY_QP with `mask` (IB_QP_* bits) over `attrs`.
    pub fn modify_qp(&mut self, qp: u32, mask: u32, attrs: &QpAttr) -> Result<(), Refused> {
        self.command_at(
            code::MODIFY_QP,
            &[
                (16, &qp.to_le_bytes()),
                (20, &mask.to_le_bytes()),
                (24, attrs.as_bytes()),
            ],
        )
        .map(|_| ())
    }

    /// QUERY_QP: the attributes the device reports.
    pub fn query_qp(&mut self, qp: u32) -> Result<QpAttr, Refused> {
        let r = self.command_at(
            code::QUERY_QP,
            &[(16, &qp.to_le_bytes()), (20, &u32::MAX.to_le_bytes())],
        )?;
        Ok(QpAttr::read_from_bytes(&r[16..176]).expect("attr size"))
    }

    /// A command that names one handle (the DESTROY_* commands).
    pub fn destroy(&mut self, cmd: u32, handle: u32) -> Result<(), Refused> {
        self.command_at(cmd, &[(16, &handle.to_le_bytes())])
            .map(|_| ())
    }

    /// The transitions an application makes for a connected QP (RC when
    /// `rc`, else UC): RESET→INIT→RTR→RTS towards `dest_qpn` at `dgid`,
    /// path MTU code `mtu` (1 = 256 … 5 = 4096), PSNs `sq_psn`/`rq_psn`,
    /// with only the attributes the IBTA allows each type. An RC QP gets
    /// the local ACK timeout 14 (4.096 µs × 2^14, 67 ms).
    #[allow(clippy::too_many_arguments)]
    pub fn connect(
        &mut self,
        qp: u32,
        rc: bool,
        dest_qpn: u32,
        dgid: [u8; 16],
        mtu: u32,
        sq_psn: u32,
        rq_psn: u32,
    ) -> Result<(), Refused> {
        self.connect_with_timeout(qp, rc, dest_qpn, dgid, mtu, sq_psn, rq_psn, 14)
    }

    /// [`Driver::connect`] with the RC local ACK timeout `timeout`
    /// (4.096 µs × 2^timeout).
    #[allow(clippy::too_many_arguments)]
    pub fn connect_with_timeout(
        &mut self,
        qp: u32,
        rc: bool,
        dest_qpn: u32,
        dgid: [u8; 16],
        mtu: u32,
        sq_psn: u32,
        rq_psn: u32,
        timeout: u8,
    ) -> Result<(), Refused> {
        let mut a = QpAttr {
            qp_state: 1.into(),
            qp_access_flags: 0xf.into(),
            port_num: 1,
            ..QpAttr::default()
        };
        // STATE | ACCESS | PKEY | PORT
        self.modify_qp(qp, 1 | 1 << 3 | 1 << 4 | 1 << 5, &a)?;
        a.qp_state = 2.into();
        a.path_mtu = mtu.into();
        a.dest_qp_num = dest_qpn.into();
        a.rq_psn = rq_psn.into();
        a.ah_attr.dgid = dgid;
        a.ah_attr.hop_limit = 64;
        a.ah_attr.ah_flags = 1;
        a.ah_attr.port_num = 1;
        // STATE | AV | PATH_MTU | DEST_QPN | RQ_PSN
        let mut rtr = 1 | 1 << 7 | 1 << 8 | 1 << 20 | 1 << 12;
        if rc {
            a.max_dest_rd_atomic = 16;
            a.min_rnr_timer = 1;
            // | MAX_DEST_RD_ATOMIC | MIN_RNR_TIMER
            rtr |= 1 << 17 | 1 << 15;
        }
        self.modify_qp(qp, rtr, &a)?;
        a.qp_state = 3.into();
        a.sq_psn = sq_psn.into();
        // STATE | SQ_PSN
        let mut rts = 1 | 1 << 16;
        if rc {
            a.timeout = timeout;
            a.retry_cnt = 7;
            a.rnr_retry = 7;
            a.max_rd_atomic = 16;
            // | TIMEOUT | RETRY | RNR_RETRY | MAX_QP_RD_ATOMIC
            rts |= 1 << 9 | 1 << 10 | 1 << 11 | 1 << 13;
        }
        self.modify_qp(qp, rts, &a)
    }

    /// A UD QP (or GSI) to RTS with Q_Key `qkey`.
    pub fn ud_ready(&mut self, qp: u32, qkey: u32) -> Result<(), Refused> {
        let mut a = QpAttr {
            qp_state: 1.into(),
            qkey: qkey.into(),
            port_num: 1,
            ..QpAttr::default()
        };
        // STATE | PKEY | PORT | QKEY
        self.modify_qp(qp, 1 | 1 << 4 | 1 << 5 | 1 << 6, &a)?;
        a.qp_state = 2.into();
        self.modify_qp(qp, 1, &a)?;
        a.qp_state = 3.into();
        a.sq_psn = 1.into();
        self.modify_qp(qp, 1 | 1 << 16, &a)
    }

    /// Room in the send queue (the consumer index the device publishes).
    pub fn sq_room(&mut self, q: &Qp) -> u32 {
        let (r, n) = (&q.sq, q.sq.idx.len());
        let cons = self.read_u32(q.pages[0] + r.cons_at);
        match r.idx.has_space(r.prod, cons) {
            Ok(Some(_)) => n - (r.prod + 2 * n - cons) % (2 * n),
            _ => 0,
        }
    }

    /// Writes a send WQE (header and SGEs) at the producer index and
    /// publishes it; the caller rings [`Driver::ring_sq`] (once for many).
    /// Panics if the queue is full or there are too many SGEs.
    pub fn post_send(&mut self, q: &mut Qp, hdr: &SqWqeHdr, sges: &[Sge]) {
        let mut h = *hdr;
        h.num_sge = (sges.len() as u32).into();
        self.post_send_verbatim(q, &h, sges);
    }

    /// [`Driver::post_send`] with the header written as given, even a
    /// `num_sge` that does not match `sges` (a hostile guest's WQE).
    pub fn post_send_verbatim(&mut self, q: &mut Qp, h: &SqWqeHdr, sges: &[Sge]) {
        assert!(self.sq_room(q) > 0, "send queue full");
        self.put_wqe(&q.pages, &mut q.sq, h.as_bytes(), sges);
    }

    /// Writes a WQE (`head`, then `sges`) at the ring's producer index,
    /// then advances and publishes the index.
    fn put_wqe(&mut self, pages: &[u64], r: &mut WqeRing, head: &[u8], sges: &[Sge]) {
        assert!(
            (head.len() + 16 * sges.len()) as u64 <= r.stride,
            "too many SGEs"
        );
        let off = u64::from(r.idx.slot(r.prod)) * r.stride;
        let gpa = pages[r.first + (off / PAGE_SIZE) as usize] + off % PAGE_SIZE;
        let mut raw = Vec::with_capacity(r.stride as usize);
        raw.extend_from_slice(head);
        for g in sges {
            raw.extend_from_slice(g.as_bytes());
        }
        self.bus.mem_write(gpa, &raw);
        r.prod = r.idx.next(r.prod);
        self.bus
            .mem_write(pages[0] + r.prod_at, &r.prod.to_le_bytes());
    }

    /// A receive WQE's header.
    fn recv_head(wr_id: u64, sges: &[Sge]) -> RqWqeHdr {
        RqWqeHdr {
            wr_id: wr_id.into(),
            num_sge: (sges.len() as u32).into(),
            total_len: 0.into(),
        }
    }

    /// Rings the QP's send doorbell.
    pub fn ring_sq(&mut self, q: &Qp) {
        self.bus.uar_write(
            self.uar * crate::regs::UAR_PAGE + doorbell::QP,
            q.handle | doorbell::QP_SEND,
        );
    }

    /// Writes a receive WQE and publishes it; the caller rings
    /// [`Driver::ring_rq`].
    pub fn post_recv(&mut self, q: &mut Qp, wr_id: u64, sges: &[Sge]) {
        let cons = self.read_u32(q.pages[0] + q.rq.cons_at);
        assert!(
            matches!(q.rq.idx.has_space(q.rq.prod, cons), Ok(Some(_))),
            "receive queue full"
        );
        let head = Self::recv_head(wr_id, sges);
        self.put_wqe(&q.pages, &mut q.rq, head.as_bytes(), sges);
    }

    /// CREATE_SRQ of `max_wr` WRs with `max_sge` SGEs each and limit
    /// `limit` (0: unarmed).
    pub fn create_srq(
        &mut self,
        pd: u32,
        max_wr: u32,
        max_sge: u32,
        limit: u32,
    ) -> Result<Srq, Refused> {
        let stride = u64::from(16 + 16 * max_sge).next_power_of_two();
        let n = 1 + (u64::from(max_wr) * stride).div_ceil(PAGE_SIZE) as u32;
        let pages = self.scattered(n);
        let dir = self.page_dir(&pages);
        let r = self.command_at(
            code::CREATE_SRQ,
            &[
                (16, &dir.to_le_bytes()),
                (24, &pd.to_le_bytes()),
                (28, &n.to_le_bytes()),
                (32, &max_wr.to_le_bytes()),
                (36, &max_sge.to_le_bytes()),
                (40, &limit.to_le_bytes()),
            ],
        )?;
        Ok(Srq {
            handle: u32_at(&r, 16),
            pages,
            ring: WqeRing::new(1, max_wr, stride, false),
        })
    }

    /// Writes a receive WQE into the SRQ and publishes it; the caller
    /// rings [`Driver::ring_srq`].
    pub fn post_srq_recv(&mut self, s: &mut Srq, wr_id: u64, sges: &[Sge]) {
        let head = Self::recv_head(wr_id, sges);
        self.put_wqe(&s.pages, &mut s.ring, head.as_bytes(), sges);
    }

    /// Rings the SRQ's doorbell.
    pub fn ring_srq(&mut self, s: &Srq) {
        self.bus.uar_write(
            self.uar * crate::regs::UAR_PAGE + doorbell::SRQ,
            s.handle | 1 << 30,
        );
    }

    /// Rings the QP's receive doorbell.
    pub fn ring_rq(&mut self, q: &Qp) {
        self.bus.uar_write(
            self.uar * crate::regs::UAR_PAGE + doorbell::QP,
            q.handle | doorbell::QP_RECV,
        );
    }

    /// Takes up to `max` CQEs from the CQ ring and publishes the new
    /// consumer index.
    pub fn poll_cq(&mut self, cq: &Cq, max: usize, out: &mut Vec<Cqe>) -> usize {
        let r = RingIdx::new(cq.entries);
        let prod = self.read_u32(cq.pages[0] + RX_PROD);
        let mut cons = self.read_u32(cq.pages[0] + RX_CONS);
        let mut n = 0;
        while n < max {
            let Ok(Some(slot)) = r.has_data(prod, cons) else {
                break;
            };
            let off = 64 * u64::from(slot);
            let gpa = cq.pages[1 + (off / PAGE_SIZE) as usize] + off % PAGE_SIZE;
            let raw = self.read(gpa, 64);
            out.push(Cqe::read_from_bytes(&raw).expect("CQE size"));
            cons = r.next(cons);
            n += 1;
        }
        if n > 0 {
            self.bus
                .mem_write(cq.pages[0] + RX_CONS, &cons.to_le_bytes());
        }
        n
    }

    /// Takes the async events the device posted: (event type, info: the
    /// QP, CQ or SRQ handle, or the port), oldest first.
    pub fn poll_async(&mut self) -> Vec<(u32, u32)> {
        let Some(&state) = self.async_pages.first() else {
            return Vec::new();
        };
        // 3 pages of 8-byte events after the ring state.
        let r = RingIdx::new((self.async_pages.len() as u32 - 1) * PAGE_SIZE as u32 / 8);
        let prod = self.read_u32(state + RX_PROD);
        let mut cons = self.read_u32(state + RX_CONS);
        let mut out = Vec::new();
        while let Ok(Some(slot)) = r.has_data(prod, cons) {
            let off = 8 * u64::from(slot);
            let gpa = self.async_pages[1 + (off / PAGE_SIZE) as usize] + off % PAGE_SIZE;
            let raw = self.read(gpa, 8);
            out.push((
                u32::from_le_bytes(raw[0..4].try_into().expect("4")),
                u32::from_le_bytes(raw[4..8].try_into().expect("4")),
            ));
            cons = r.next(cons);
        }
        if !out.is_empty() {
            self.bus.mem_write(state + RX_CONS, &cons.to_le_bytes());
        }
        out
    }

    /// QUERY_PORT of port 1: its state (4 ACTIVE, 1 DOWN).
    pub fn port_state(&mut self) -> Result<u32, Refused> {
        let r = self.command_at(code::QUERY_PORT, &[(16, &[1])])?;
        Ok(u32_at(&r, 16))
    }

    /// Arms the CQ for its next completion (`solicited`: the next
    /// solicited one).
    pub fn arm_cq(&mut self, cq: &Cq, solicited: bool) {
        let bit = if solicited {
            doorbell::CQ_ARM_SOL
        } else {
            doorbell::CQ_ARM
        };
        self.bus.uar_write(
            self.uar * crate::regs::UAR_PAGE + doorbell::CQ,
            cq.handle | bit,
        );
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// An SGE.
pub fn sge(addr: u64, length: u32, lkey: u32) -> Sge {
    Sge {
        addr: addr.into(),
        length: length.into(),
        lkey: lkey.into(),
    }
}

/// A send WQE header: `opcode` (`abi::wr_opcode`), signaled or not.
pub fn send_wqe(wr_id: u64, opcode: u32, signaled: bool) -> SqWqeHdr {
    SqWqeHdr {
        wr_id: wr_id.into(),
        opcode: opcode.into(),
        send_flags: (if signaled { 2u32 } else { 0 }).into(),
        ..SqWqeHdr::default()
    }
}

/// Fills the RDMA part of a WQE (WRITE, WRITE_WITH_IMM, READ).
pub fn with_rdma(mut h: SqWqeHdr, remote_addr: u64, rkey: u32) -> SqWqeHdr {
    h.wr[0..8].copy_from_slice(&remote_addr.to_le_bytes());
    h.wr[8..12].copy_from_slice(&rkey.to_le_bytes());
    h
}

/// Fills the atomic part of a WQE: compare (or add) and swap.
pub fn with_atomic(
    mut h: SqWqeHdr,
    remote_addr: u64,
    rkey: u32,
    cmp_add: u64,
    swap: u64,
) -> SqWqeHdr {
    h.wr[0..8].copy_from_slice(&remote_addr.to_le_bytes());
    h.wr[8..16].copy_from_slice(&cmp_add.to_le_bytes());
    h.wr[16..24].copy_from_slice(&swap.to_le_bytes());
    h.wr[24..28].copy_from_slice(&rkey.to_le_bytes());
    h
}

/// A FAST_REG_MR WQE: map `key`'s MR at `iova` over the pages listed in
/// the page directory `pl_dir` (`npages` pages of `1 << page_shift`
/// bytes), `len` bytes with IB `access`.
#[allow(clippy::too_many_arguments)]
pub fn with_fast_reg(
    mut h: SqWqeHdr,
    iova: u64,
    pl_dir: u64,
    page_shift: u32,
    npages: u32,
    len: u32,
    access: u32,
    key: u32,
) -> SqWqeHdr {
    h.wr[0..8].copy_from_slice(&iova.to_le_bytes());
    h.wr[8..16].copy_from_slice(&pl_dir.to_le_bytes());
    h.wr[16..20].copy_from_slice(&page_shift.to_le_bytes());
    h.wr[20..24].copy_from_slice(&npages.to_le_bytes());
    h.wr[24..28].copy_from_slice(&len.to_le_bytes());
    h.wr[28..32].copy_from_slice(&access.to_le_bytes());
    h.wr[32..36].copy_from_slice(&key.to_le_bytes());
    h
}

/// Names the key a SEND_WITH_INV or LOCAL_INV invalidates.
pub fn with_invalidate(mut h: SqWqeHdr, key: u32) -> SqWqeHdr {
    h.ex = key.to_le_bytes();
    h
}

/// Fills the UD part of a WQE: the remote QPN and Q_Key and the address
/// vector (destination GID, source GID index 0).
pub fn with_ud(mut h: SqWqeHdr, pd: u32, remote_qpn: u32, qkey: u32, dgid: [u8; 16]) -> SqWqeHdr {
    let av = crate::abi::Av {
        port_pd: (pd & 0xff_ffff | 1 << 24).into(),
        dgid,
        hop_limit: 64,
        ..crate::abi::Av::default()
    };
    h.wr[0..4].copy_from_slice(&remote_qpn.to_le_bytes());
    h.wr[4..8].copy_from_slice(&qkey.to_le_bytes());
    h.wr[8..48].copy_from_slice(av.as_bytes());
    h
}

/// An IPv4-mapped GID.
pub fn gid_v4(ip: [u8; 4]) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[10] = 0xff;
    g[11] = 0xff;
    g[12..].copy_from_slice(&ip);
    g
}
