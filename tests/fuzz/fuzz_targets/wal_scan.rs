//! Fuzz the WAL reader: header parse, `resume` and the `Scanner` over
//! arbitrary bytes. No input may panic, and what the scanner yields must obey
//! its contract (frames inside the file, commit frames only at the end of a
//! transaction, positions moving forward on frame boundaries).
//!
//! A leading byte with bit 0 set selects "repair" mode: the header checksum,
//! the frames' salts and the checksum chain are recomputed before scanning,
//! so the fuzzer reaches the transaction logic instead of stopping at the
//! first checksum (which random bytes almost never satisfy).
#![no_main]

use libfuzzer_sys::fuzz_target;
use walsync::sqlite::wal::{
    self, checksum, Checksum, Position, Resume, Scanner, WalHeader, FRAME_HEADER_SIZE,
    WAL_HEADER_SIZE,
};

fn repair(data: &mut [u8]) {
    if data.len() < WAL_HEADER_SIZE {
        return;
    }
    let big_endian = data[3] == 0x83;
    let sum = checksum(big_endian, Checksum(0, 0), &data[..24]);
    data[24..28].copy_from_slice(&sum.0.to_be_bytes());
    data[28..32].copy_from_slice(&sum.1.to_be_bytes());
    let Ok(h) = WalHeader::parse(data) else {
        return;
    };
    let frame = h.frame_size() as usize;
    let mut sum = h.checksum;
    let mut at = WAL_HEADER_SIZE;
    while at + frame <= data.len() {
        data[at + 8..at + 12].copy_from_slice(&h.salt1.to_be_bytes());
        data[at + 12..at + 16].copy_from_slice(&h.salt2.to_be_bytes());
        sum = checksum(big_endian, sum, &data[at..at + 8]);
        sum = checksum(big_endian, sum, &data[at + FRAME_HEADER_SIZE..at + frame]);
        data[at + 16..at + 20].copy_from_slice(&sum.0.to_be_bytes());
        data[at + 20..at + 24].copy_from_slice(&sum.1.to_be_bytes());
        at += frame;
    }
}

fn scan(data: &[u8], pos: Position, limit: u64) {
    let Ok(scanner) = Scanner::new(data, pos) else {
        return;
    };
    let mut scanner = scanner.with_frame_limit(limit);
    let frame = FRAME_HEADER_SIZE as u64 + u64::from(pos.page_size);
    let mut last_end = pos.offset;
    for tx in scanner.by_ref() {
        assert!(!tx.frames.is_empty(), "a transaction without frames");
        assert!(tx.commit > 0, "a transaction without a commit size");
        assert_eq!(
            tx.start_offset(),
            last_end,
            "transactions must be contiguous"
        );
        for f in &tx.frames {
            assert!(f.pgno > 0);
            assert_eq!((f.offset - WAL_HEADER_SIZE as u64) % frame, 0);
            let page = wal::frame_page(data, pos.page_size, f).expect("frame inside the file");
            assert_eq!(page.len(), pos.page_size as usize);
        }
        assert!(tx.end.offset > last_end);
        assert!(tx.end.offset <= data.len() as u64);
        assert_eq!(
            tx.end.frame_index(),
            (tx.end.offset - WAL_HEADER_SIZE as u64) / frame
        );
        last_end = tx.end.offset;
    }
    assert!(
        scanner.stop_reason().is_some(),
        "the scan ended without a reason"
    );
    assert_eq!(scanner.position().offset, last_end);
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let mut data = rest.to_vec();
    if mode & 1 == 1 {
        repair(&mut data);
    }
    let limit = if mode & 2 == 2 {
        u64::from(mode >> 2)
    } else {
        u64::MAX
    };
    let header = WalHeader::parse(&data);
    match wal::resume(&data, None) {
        Ok(Resume::Fresh(pos)) => {
            assert!(header.is_ok());
            scan(&data, pos, limit);
            // Resuming from the position after the first transaction must
            // give the same rest as scanning on.
            if let Ok(s) = Scanner::new(&data, pos) {
                let txs: Vec<_> = s.collect();
                if let Some(first) = txs.first() {
                    match wal::resume(&data, Some(&first.end)) {
                        Ok(Resume::Continue(p)) => {
                            let again: Vec<_> =
                                Scanner::new(&data, p).expect("same generation").collect();
                            assert_eq!(again, txs[1..].to_vec());
                        }
                        other => panic!("resume at a yielded position: {other:?}"),
                    }
                }
            }
        }
        Ok(Resume::Empty) => assert!(data.is_empty()),
        Ok(other) => panic!("resume without a position gave {other:?}"),
        Err(_) => assert!(header.is_err() || data.is_empty()),
    }
});
