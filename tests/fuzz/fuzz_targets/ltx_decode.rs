//! Fuzz the LTX decoder over arbitrary bytes: `Header::decode`, the
//! streaming `Decoder` (fed in small reads), `verify` and `decode_all`. No
//! input may panic or allocate without bound; a file accepted by one entry
//! point must be accepted by the others with the same pages.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use walsync::ltx::{self, Decoder, Header, HEADER_SIZE};

/// A reader handing out at most `step` bytes per call (short reads).
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.get(..HEADER_SIZE) {
        if let Ok(header) = Header::decode(h) {
            let _ = header.validate();
            assert_eq!(Header::decode(&header.encode()), Ok(header));
        }
    }
    let all = ltx::decode_all(data, "fuzz.ltx");
    let verified = ltx::verify(data, "fuzz.ltx");
    assert_eq!(
        all.is_ok(),
        verified.is_ok(),
        "decode_all and verify disagree"
    );
    let step = 1 + data.first().map_or(0, |b| usize::from(*b % 7));
    let streamed = (|| -> walsync::Result<Vec<(u32, Vec<u8>)>> {
        let mut dec = Decoder::new(Trickle { data, step }, "fuzz.ltx")?;
        let mut buf = vec![0u8; dec.header().page_size as usize];
        let mut pages = Vec::new();
        while let Some(pgno) = dec.next_page(&mut buf)? {
            pages.push((pgno, buf.clone()));
        }
        dec.finish()?;
        Ok(pages)
    })();
    match (&all, &streamed) {
        (Ok((_, a)), Ok(b)) => assert_eq!(a, b, "short reads changed the pages"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "whole and trickled decode disagree: {:?} vs {:?}",
            a.as_ref().map(|_| ()),
            b.as_ref().map(|_| ())
        ),
    }
    if let Ok((header, pages)) = all {
        let mut prev = 0;
        for (pgno, page) in &pages {
            assert!(*pgno > prev, "pages not strictly increasing");
            assert_eq!(page.len(), header.page_size as usize);
            prev = *pgno;
        }
    }
});
