//! Fuzzes the CM MAD parsers (`transport::wire::cm`): arbitrary bytes go
//! through `MadHeader::parse`, the parser of the message it names, and
//! `CmaHeader::parse` on a REQ's private data; SIDR_REQ and SIDR_REP too.
//!
//! Properties asserted, beyond "never panics": a REQ, REP or ID-only
//! message that parses re-emits to bytes that parse to the same repr,
//! and a parsed rdma_cm header re-emits and re-parses unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::wire::cm::{
    CmAttr, CmaHeader, IdsRepr, MAD_LEN, MadHeader, RepRepr, ReqRepr, SidrRepRepr, SidrReqRepr,
};

fuzz_target!(|data: &[u8]| {
    let Ok(h) = MadHeader::parse(data) else {
        return;
    };
    let mut out = [0u8; MAD_LEN];
    match h.attr {
        CmAttr::Req => {
            let r = ReqRepr::parse(data).expect("a REQ with a valid header parses");
            r.emit(h.tid, &mut out);
            assert_eq!(ReqRepr::parse(&out).expect("emitted REQ parses"), r);
            if let Ok(c) = CmaHeader::parse(&r.private_data) {
                let mut p = [0u8; 92];
                c.emit(&mut p);
                assert_eq!(CmaHeader::parse(&p).expect("emitted header parses"), c);
            }
        }
        CmAttr::Rep => {
            let r = RepRepr::parse(data).expect("a REP with a valid header parses");
            r.emit(h.tid, &mut out);
            assert_eq!(RepRepr::parse(&out).expect("emitted REP parses"), r);
        }
        CmAttr::Rtu | CmAttr::Dreq | CmAttr::Drep | CmAttr::Rej => {
            let r = IdsRepr::parse(data).expect("an ID-only message parses");
            r.emit(h.tid, &mut out);
            assert_eq!(IdsRepr::parse(&out).expect("emitted message parses"), r);
        }
        CmAttr::SidrReq => {
            let r = SidrReqRepr::parse(data).expect("a SIDR_REQ with a valid header parses");
            r.emit(h.tid, &mut out);
            assert_eq!(SidrReqRepr::parse(&out).expect("emitted SIDR_REQ parses"), r);
        }
        CmAttr::SidrRep => {
            let r = SidrRepRepr::parse(data).expect("a SIDR_REP with a valid header parses");
            r.emit(h.tid, &mut out);
            assert_eq!(SidrRepRepr::parse(&out).expect("emitted SIDR_REP parses"), r);
        }
        CmAttr::Mra => {}
    }
});
