//! Decoded audio pulled rather than pushed: [`ChunkReader`] runs
//! [`decode_chunks`] on its own thread, at most [`AHEAD`] chunks ahead of
//! the reader, for a consumer that decides when it wants more (Whisper's
//! long-form loop asks for 30 s windows).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{decode_chunks, AudioError, DecodeOptions, Input, Opener};

/// Chunks decoded ahead of the reader: about 8 s at 16 kHz, 0.5 MB.
const AHEAD: usize = 8;

/// One front-to-back read of a file, chunk by chunk (the chunks of
/// [`decode_chunks`], in order). Owns its decoder thread: dropping the
/// reader stops the thread and waits for it.
pub struct ChunkReader {
    chunks: Option<Receiver<Result<Vec<f32>, AudioError>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ChunkReader {
    /// Starts decoding the plain file `path` with `options` on a new thread.
    pub fn open(path: &Path, options: &DecodeOptions) -> ChunkReader {
        ChunkReader::open_input(path, None, options)
    }

    /// Starts decoding on a new thread the input named `path`, read through
    /// `opener` when given (an encrypted file), else from the file system.
    pub fn open_input(
        path: &Path,
        opener: Option<Arc<dyn Opener>>,
        options: &DecodeOptions,
    ) -> ChunkReader {
        let (tx, rx) = sync_channel(AHEAD);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (path, options, stop) = (path.to_path_buf(), options.clone(), stop.clone());
            std::thread::Builder::new()
                .name("murmur-decode".into())
                .spawn(move || {
                    let input = match &opener {
                        Some(opener) => Input::opened_by(&path, opener.as_ref()),
                        None => Input::file(&path),
                    };
                    let result = decode_chunks::<AudioError>(
                        input,
                        &options,
                        &|| stop.load(Ordering::Relaxed),
                        |chunk, _| {
                            // A reader that left is a stop, not an error.
                            tx.send(Ok(chunk.to_vec()))
                                .map_err(|_| AudioError::Cancelled { path: path.clone() })
                        },
                    );
                    if let Err(e) = result {
                        let _ = tx.send(Err(e));
                    }
                })
        };
        match thread {
            Ok(thread) => ChunkReader {
                chunks: Some(rx),
                stop,
                thread: Some(thread),
            },
            Err(e) => {
                // No thread: the reader answers the error once.
                let (tx, rx) = sync_channel(1);
                let _ = tx.send(Err(AudioError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }));
                ChunkReader {
                    chunks: Some(rx),
                    stop,
                    thread: None,
                }
            }
        }
    }
}

impl Iterator for ChunkReader {
    type Item = Result<Vec<f32>, AudioError>;

    /// The next chunk; `None` at the end of the file (or after an error).
    fn next(&mut self) -> Option<Self::Item> {
        let item = self.chunks.as_ref()?.recv().ok();
        if !matches!(item, Some(Ok(_))) {
            self.chunks = None;
        }
        item
    }
}

impl Drop for ChunkReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblocks a decoder waiting to send.
        self.chunks = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode_file_with, write_wav_16bit};
    use super::*;

    #[test]
    fn pulled_chunks_are_the_decoded_file_and_a_reader_can_leave_early() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.wav");
        let tone: Vec<f32> = (0..22_050 * 5)
            .map(|i| 0.3 * (i as f32 * 0.05).sin())
            .collect();
        write_wav_16bit(&path, &tone, 22_050, 1).unwrap();
        let options = DecodeOptions::default();
        let whole = decode_file_with(&path, &options).unwrap().samples;
        let pulled: Vec<f32> = ChunkReader::open(&path, &options)
            .flat_map(|c| c.unwrap())
            .collect();
        assert!(pulled == whole);
        // Leaving after one chunk stops the decoder (the drop joins it).
        let mut reader = ChunkReader::open(&path, &options);
        assert!(reader.next().unwrap().is_ok());
        drop(reader);
        // A missing file is one error, then the end.
        let mut missing = ChunkReader::open(&dir.path().join("gone.wav"), &options);
        assert!(matches!(missing.next(), Some(Err(AudioError::Io { .. }))));
        assert!(missing.next().is_none());
    }
}
