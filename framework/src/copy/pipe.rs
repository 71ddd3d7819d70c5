//! The pipe between a source's reader and the target's `COPY .. FROM STDIN`: a few reused
//! buffers of `COPY` data in flight, so that both ends work at once and memory stays
//! constant.

use tokio::sync::mpsc::{Receiver, Sender};

/// Bytes of `COPY` data gathered before they are sent on: rows arrive one message each.
pub(super) const SEND_BYTES: usize = 1 << 20;

/// Buffers of [`SEND_BYTES`] in flight between reading the source and writing the target.
const BUFFERS: usize = 3;

/// A buffer of `COPY` data and the rows in it.
pub(super) type Filled = (Vec<u8>, u64);

/// Full buffers of `COPY` data (with their row counts) going from a reader to a writer,
/// and [`BUFFERS`] empty ones of about [`SEND_BYTES`] coming back to be filled again.
pub(super) struct Buffers {
    pub(super) full_tx: Sender<Filled>,
    pub(super) full_rx: Receiver<Filled>,
    pub(super) empty_tx: Sender<Vec<u8>>,
    pub(super) empty_rx: Receiver<Vec<u8>>,
}

impl Buffers {
    pub(super) fn new() -> Buffers {
        let (full_tx, full_rx) = tokio::sync::mpsc::channel(BUFFERS);
        let (empty_tx, empty_rx) = tokio::sync::mpsc::channel(BUFFERS + 1);
        for _ in 0..BUFFERS {
            let _ = empty_tx.try_send(Vec::with_capacity(SEND_BYTES + (64 << 10)));
        }
        Buffers {
            full_tx,
            full_rx,
            empty_tx,
            empty_rx,
        }
    }
}
