//! Unit tests of the transmission phase against a memory disk, over an in-memory pipe.

use std::collections::HashMap;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

use super::*;
use crate::backend::memory::MemDisk;

const SIZE: usize = 1 << 20;

struct Client {
    s: DuplexStream,
}

impl Client {
    async fn send(&mut self, kind: u16, flags: u16, handle: u64, offset: u64, len: u32, data: &[u8]) {
        let r = Request { flags, kind, handle, offset, len };
        self.s.write_all(&encode_request(&r)).await.unwrap();
        self.s.write_all(data).await.unwrap();
    }

    /// One simple reply: (handle, error); `read_len` bytes of data follow a successful read.
    async fn reply(&mut self, read_lens: &HashMap<u64, usize>) -> (u64, u32, Vec<u8>) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).await.unwrap();
        assert_eq!(&h[0..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        let errno = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let handle = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let mut data = vec![0u8; if errno == 0 { read_lens.get(&handle).copied().unwrap_or(0) } else { 0 }];
        self.s.read_exact(&mut data).await.unwrap();
        (handle, errno, data)
    }
}

/// Runs `serve` on a memory disk against `client`; returns how it ended and the disk.
async fn run<F, Fut>(disk: MemDisk, client: F) -> (Result<End, TransmissionError>, Rc<MemDisk>)
where
    F: FnOnce(Client, watch::Sender<bool>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let disk = Rc::new(disk);
    let local = tokio::task::LocalSet::new();
    let d = disk.clone();
    let r = local
        .run_until(async move {
            let (a, b) = tokio::io::duplex(1 << 16);
            let (rd, wr) = tokio::io::split(a);
            let (stop_tx, stop_rx) = watch::channel(false);
            let limits = Limits { queue_depth: 16, buffered: 1 << 20, drain: Duration::from_secs(5) };
            let server = serve(d, rd, wr, stop_rx, limits, "test");
            let (r, ()) = tokio::join!(server, client(Client { s: b }, stop_tx));
            r
        })
        .await;
    (r, disk)
}

#[tokio::test]
async fn writes_reads_errors_and_clean_disconnect() {
    let disk = MemDisk::new(SIZE);
    disk.bad_offset.set(Some(8192));
    let (r, disk) = run(disk, |mut c, _stop| async move {
        let pattern: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        c.send(CMD_WRITE, CMD_FLAG_FUA, 1, 4096, 8192, &pattern).await;
        c.send(CMD_FLUSH, 0, 2, 0, 0, &[]).await;
        let none = HashMap::new();
        let mut got: HashMap<u64, u32> = HashMap::new();
        for _ in 0..2 {
            let (h, e, _) = c.reply(&none).await;
            got.insert(h, e);
        }
        assert_eq!(got, HashMap::from([(1, 0), (2, 0)]));
        let lens = HashMap::from([(3, 8192usize), (4, 16), (5, 16), (6, 100)]);
        c.send(CMD_READ, 0, 3, 4096, 8192, &[]).await;
        c.send(CMD_READ, 0, 4, SIZE as u64 - 8, 16, &[]).await; // past the end
        c.send(CMD_READ, 0, 5, 8192, 16, &[]).await; // I/O error
        c.send(99, 0, 8, 0, 0, &[]).await; // unknown command
        c.send(CMD_WRITE, 0, 9, SIZE as u64, 1, &[0]).await; // past the end, payload skipped
        c.send(CMD_TRIM, 0, 10, u64::MAX, 4096, &[]).await; // overflowing range
        let mut replies = HashMap::new();
        for _ in 0..6 {
            let (h, e, d) = c.reply(&lens).await;
            replies.insert(h, (e, d));
        }
        assert!(replies[&3] == (0, pattern.clone()), "read back what was written");
        assert_eq!(replies[&4].0, EINVAL);
        assert_eq!(replies[&5].0, EIO);
        assert_eq!(replies[&8].0, EINVAL);
        assert_eq!(replies[&9].0, EINVAL);
        assert_eq!(replies[&10].0, EINVAL);
        // The connection still works after errors.
        c.send(CMD_WRITE_ZEROES, 0, 7, 4096, 4096, &[]).await;
        assert_eq!(c.reply(&lens).await.1, 0);
        c.send(CMD_READ, 0, 6, 8200, 100, &[]).await;
        let (h, e, d) = c.reply(&lens).await;
        assert_eq!((h, e), (6, 0));
        assert_eq!(d, pattern[4104..4204]);
        c.send(CMD_DISC, 0, 11, 0, 0, &[]).await;
        let mut rest = Vec::new();
        c.s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "no reply to NBD_CMD_DISC");
    })
    .await;
    assert_eq!(r.unwrap(), End::Disconnected);
    let data = disk.data.borrow();
    assert!(data[4096..8192].iter().all(|&b| b == 0), "write-zeroes cleared the range");
    assert_eq!(data[8192], (4096 % 251) as u8);
    assert_eq!(disk.flushes.get(), 2, "the flush asked for and the one at disconnect");
}

#[tokio::test]
async fn many_requests_run_concurrently_and_replies_come_out_of_order() {
    let (r, disk) = run(MemDisk::new(SIZE), |c, _stop| async move {
        // Requests are sent while replies are read, as a real client does.
        let (rd, wr) = tokio::io::split(c.s);
        let sender = async move {
            let mut wr = wr;
            for i in 0..200u64 {
                let len = 512 * (1 + (i % 7) as u32);
                let w = Request { flags: 0, kind: CMD_WRITE, handle: 1000 + i, offset: i * 4096, len };
                wr.write_all(&encode_request(&w)).await.unwrap();
                wr.write_all(&vec![i as u8; len as usize]).await.unwrap();
                let r = Request { flags: 0, kind: CMD_READ, handle: 5000 + i, offset: (199 - i) * 4096, len: 512 };
                wr.write_all(&encode_request(&r)).await.unwrap();
            }
            wr
        };
        let receiver = async move {
            let mut rd = rd;
            let mut seen = Vec::new();
            for _ in 0..400 {
                let mut h = [0u8; 16];
                rd.read_exact(&mut h).await.unwrap();
                assert_eq!(&h[4..8], &[0, 0, 0, 0]);
                let handle = u64::from_be_bytes(h[8..16].try_into().unwrap());
                if handle >= 5000 {
                    rd.read_exact(&mut [0u8; 512]).await.unwrap();
                }
                seen.push(handle);
            }
            seen
        };
        let (wr, seen) = tokio::join!(sender, receiver);
        let unique: std::collections::HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), 400, "every request answered once");
        drop(wr);
        // The client closes without NBD_CMD_DISC.
    })
    .await;
    assert_eq!(r.unwrap(), End::Vanished);
    assert!(disk.max_in_flight.get() > 1, "requests ran one at a time");
    assert!(disk.max_in_flight.get() <= 16, "more than the queue depth in flight");
    assert_eq!(disk.data.borrow()[199 * 4096], 199);
}

#[tokio::test]
async fn bad_magic_and_oversize_requests() {
    let (r, _) = run(MemDisk::new(SIZE), |mut c, _stop| async move {
        c.s.write_all(&[0u8; REQUEST_LEN]).await.unwrap();
        let mut rest = Vec::new();
        let _ = c.s.read_to_end(&mut rest).await;
    })
    .await;
    assert!(matches!(r, Err(TransmissionError::Proto(ProtoError::BadRequestMagic(0)))), "{r:?}");

    let (r, _) = run(MemDisk::new(SIZE), |mut c, _stop| async move {
        let none = HashMap::new();
        c.send(CMD_READ, 0, 1, 0, MAX_REQUEST + 1, &[]).await;
        assert_eq!(c.reply(&none).await.1, EINVAL);
        // A write too large to take is refused, then the connection ends.
        c.send(CMD_WRITE, 0, 2, 0, MAX_REQUEST + 1, &[]).await;
        assert_eq!(c.reply(&none).await.1, EINVAL);
        let mut rest = Vec::new();
        let _ = c.s.read_to_end(&mut rest).await;
    })
    .await;
    assert!(matches!(r, Err(TransmissionError::WriteTooBig(n)) if n == MAX_REQUEST + 1));
}

#[tokio::test]
async fn shutdown_answers_what_is_in_flight() {
    let (r, _) = run(MemDisk::new(SIZE), |mut c, stop| async move {
        c.send(CMD_WRITE, 0, 1, 0, 4, b"abcd").await;
        let (h, e, _) = c.reply(&HashMap::new()).await;
        assert_eq!((h, e), (1, 0));
        stop.send_replace(true);
        let mut rest = Vec::new();
        c.s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    })
    .await;
    assert_eq!(r.unwrap(), End::Shutdown);
}
