//! Reading packet captures: classic pcap and pcapng, through the
//! `pcap-file` crate, as one stream of numbered frames with their link
//! type. Truncated files and bad records become errors that name the
//! frame; nothing here panics on hostile input.

use std::{
    borrow::Cow,
    io::{self, Cursor, Read},
};

use pcap_file::{
    DataLink, PcapError,
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
};

/// How the frames of a capture begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// Ethernet II (LINKTYPE_ETHERNET, 1).
    Ethernet,
    /// A bare IPv4 or IPv6 datagram (LINKTYPE_RAW, IPV4 or IPV6).
    RawIp,
    /// Anything else, with its LINKTYPE number.
    Other(u32),
}

impl From<DataLink> for LinkType {
    fn from(d: DataLink) -> LinkType {
        match d {
            DataLink::ETHERNET => LinkType::Ethernet,
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => LinkType::RawIp,
            other => LinkType::Other(u32::from(other)),
        }
    }
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// 1-based frame number, counting packet records only.
    pub number: usize,
    /// Link type of the interface it was captured on.
    pub link: LinkType,
    /// The captured bytes.
    pub data: Cow<'a, [u8]>,
    /// Length of the frame on the wire; larger than `data` when the
    /// capture's snap length cut it.
    pub orig_len: u32,
}

/// Why a capture cannot be read further.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be read.
    #[error("cannot read the capture")]
    Io(#[source] io::Error),
    /// The file does not start with a pcap or pcapng magic number.
    #[error("not a pcap or pcapng file (magic {0:02x?})")]
    UnknownFormat([u8; 4]),
    /// The file header is invalid.
    #[error("invalid capture file header")]
    BadHeader(#[source] PcapError),
    /// The file ends inside a record.
    #[error("frame {frame}: the capture file ends inside this record (truncated file)")]
    Truncated {
        /// Number the frame would have had.
        frame: usize,
    },
    /// A record is malformed.
    #[error("frame {frame}: malformed capture record")]
    BadRecord {
        /// Number the frame would have had.
        frame: usize,
        /// What pcap-file reported.
        #[source]
        source: PcapError,
    },
}

enum Inner<R: Read> {
    Pcap(PcapReader<R>),
    PcapNg(PcapNgReader<R>),
}

/// A capture being read, frame by frame.
pub struct Capture<R: Read> {
    inner: Inner<R>,
    frames: usize,
}

impl<R: Read> Capture<io::Chain<Cursor<[u8; 4]>, R>> {
    /// Opens a capture, telling pcap from pcapng by the magic number.
    pub fn open(mut reader: R) -> Result<Self, CaptureError> {
        let mut magic = [0u8; 4];
        reader.read_exact(&mut magic).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                CaptureError::UnknownFormat(magic)
            } else {
                CaptureError::Io(e)
            }
        })?;
        let whole = Cursor::new(magic).chain(reader);
        let inner = match magic {
            [0x0a, 0x0d, 0x0d, 0x0a] => {
                Inner::PcapNg(PcapNgReader::new(whole).map_err(header_error)?)
            }
            [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0xc3, 0xd4]
            | [0x4d, 0x3c, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d] => {
                Inner::Pcap(PcapReader::new(whole).map_err(header_error)?)
            }
            other => return Err(CaptureError::UnknownFormat(other)),
        };
        Ok(Capture { inner, frames: 0 })
    }
}

fn header_error(e: PcapError) -> CaptureError {
    match e {
        PcapError::IoError(io) => CaptureError::Io(io),
        other => CaptureError::BadHeader(other),
    }
}

impl<R: Read> Capture<R> {
    /// The next frame, `None` at the end of the file.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, CaptureError>> {
        let number = self.frames + 1;
        let record_error = |e: PcapError| match e {
            PcapError::IncompleteBuffer => CaptureError::Truncated { frame: number },
            PcapError::IoError(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
                CaptureError::Truncated { frame: number }
            }
            PcapError::IoError(io) => CaptureError::Io(io),
            source => CaptureError::BadRecord {
                frame: number,
                source,
            },
        };
        let frame = match &mut self.inner {
            Inner::Pcap(r) => {
                let link = LinkType::from(r.header().datalink);
                match r.next_packet()? {
                    Ok(p) => Frame {
                        number,
                        link,
                        data: p.data,
                        orig_len: p.orig_len,
                    },
                    Err(e) => return Some(Err(record_error(e))),
                }
            }
            Inner::PcapNg(r) => loop {
                // Skip non-packet blocks; find the interface of packets.
                let (iface, data, orig_len) = match r.next_block()? {
                    Err(e) => return Some(Err(record_error(e))),
                    Ok(Block::EnhancedPacket(p)) => {
                        (p.interface_id, p.data.into_owned(), p.original_len)
                    }
                    Ok(Block::SimplePacket(p)) => (0, p.data.into_owned(), p.original_len),
                    Ok(Block::Packet(p)) => (
                        u32::from(p.interface_id),
                        p.data.into_owned(),
                        p.original_len,
                    ),
                    Ok(_) => continue,
                };
                let link = match r.interfaces().get(iface as usize) {
                    Some(i) => LinkType::from(i.linktype),
                    None => {
                        return Some(Err(CaptureError::BadRecord {
                            frame: number,
                            source: PcapError::InvalidInterfaceId(iface),
                        }));
                    }
                };
                break Frame {
                    number,
                    link,
                    data: Cow::Owned(data),
                    orig_len,
                };
            },
        };
        self.frames = number;
        Some(Ok(frame))
    }
}
