//! The bytes of remote runs, between the control node's disk and a
//! worker node's slot, a chunk of at most [`CHUNK_BYTES`] at a time with
//! one outstanding, so memory on both sides stays bounded: the job's audio
//! out ([`serve_audio`]), a separation's stems back ([`collect`]).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use murmur_seal::DataKey;
use ractor::ActorRef;
use tokio::sync::mpsc;

use super::PoolMsg;
use crate::cluster::wire::{Outcome, ToControl, ToWorker};
use crate::cluster::CHUNK_BYTES;
use crate::engine::WorkRequest;
use crate::sealed::{is_artifact_name, ArtifactWriter};

/// The job's artifacts folder here, and how its artifacts are sealed.
pub(super) struct ArtifactDest {
    pub folder: PathBuf,
    pub key: Option<Arc<DataKey>>,
    pub job_id: String,
    /// The longest stem the job can produce, in bytes; `None`: no limit
    /// (a job without an audio limit).
    pub max_stem_bytes: Option<u64>,
}

impl ArtifactDest {
    /// Bytes of a stem of the longest audio a job may process (`max_s`):
    /// a 16-bit stereo WAV at the separator's rate, with a second of slack
    /// for resampling and the header.
    pub fn stem_bytes_for(max_s: f64) -> u64 {
        let bytes_per_s = u64::from(murmur_models::separate::SAMPLE_RATE) * 4;
        (max_s.max(0.0).ceil() as u64 + 1) * bytes_per_s + 44
    }

    /// Why a worker's list of artifacts cannot be this job's, if it
    /// cannot: the engine writes the separator's stems, each at most
    /// `max_stem_bytes`. A worker is an authenticated peer, but one that
    /// lies must not fill the control node's disk.
    fn refuses(&self, artifacts: &[(String, u64)]) -> Option<String> {
        artifacts.iter().find_map(|(name, len)| {
            if !is_artifact_name(name) || !murmur_models::separate::STEMS.contains(&name.as_str()) {
                Some(format!("an artifact named {name:?}"))
            } else if self.max_stem_bytes.is_some_and(|max| *len > max) {
                Some(format!(
                    "{name} of {len} bytes, more than the job's audio can make"
                ))
            } else {
                None
            }
        })
    }
}

/// A chunk of an artifact, as the slot sent it.
pub(super) struct ArtifactChunk {
    pub name: String,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Opens the job's audio (through the seal when it is sealed), sends the
/// run, and answers asks for chunks until the run ends.
pub(super) async fn serve_audio(
    slot: ActorRef<ToWorker>,
    pool: ActorRef<PoolMsg>,
    ticket: u64,
    mut request: Box<WorkRequest>,
    mut asks: mpsc::UnboundedReceiver<(u64, u32)>,
) {
    let stored = request.stored_audio();
    let opened = tokio::task::spawn_blocking(move || stored.open()).await;
    let (mut reader, len) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => {
            let outcome = Outcome::Transient(format!("the job's audio could not be read: {e}"));
            let _ = pool.send_message(PoolMsg::Remote(ToControl::Finished { ticket, outcome }));
            return;
        }
        Err(_) => return,
    };
    // The control node's paths and keys stay here.
    request.audio = Default::default();
    request.sealing = None;
    let _ = slot.send_message(ToWorker::Run {
        ticket,
        request,
        audio_bytes: len,
    });
    while let Some((offset, max)) = asks.recv().await {
        let max = max.clamp(1, CHUNK_BYTES) as usize;
        let read = tokio::task::spawn_blocking(move || {
            let mut data = Vec::with_capacity(max);
            let got = reader
                .seek(SeekFrom::Start(offset))
                .and_then(|_| (&mut reader).take(max as u64).read_to_end(&mut data));
            (reader, got.map(|_| data))
        })
        .await;
        let Ok((back, data)) = read else { return };
        reader = back;
        match data {
            Ok(data) => {
                metrics::counter!("murmur_cluster_audio_bytes_sent_total")
                    .increment(data.len() as u64);
                let _ = slot.send_message(ToWorker::Chunk {
                    ticket,
                    offset,
                    data,
                });
            }
            Err(e) => {
                let outcome = Outcome::Transient(format!("the job's audio could not be read: {e}"));
                let _ = pool.send_message(PoolMsg::Remote(ToControl::Finished { ticket, outcome }));
                return;
            }
        }
    }
}

/// What the task fetching a run's artifacts talks to.
pub(super) struct Fetch {
    pub slot: ActorRef<ToWorker>,
    pub pool: ActorRef<PoolMsg>,
    pub ticket: u64,
}

impl Fetch {
    /// Ends the run with a transient error (its job is retried) and tells
    /// the slot to drop it.
    pub(super) fn fail(&self, why: String) {
        tracing::warn!(ticket = self.ticket, %why, "fetching a worker node's artifacts failed");
        let outcome =
            Outcome::Transient(format!("fetching the job's stems from its worker: {why}"));
        let _ = self.pool.send_message(PoolMsg::Remote(ToControl::Finished {
            ticket: self.ticket,
            outcome,
        }));
        let _ = self.slot.send_message(ToWorker::Cancel {
            ticket: self.ticket,
        });
    }
}

/// Fetches each artifact of a run from its slot, a chunk at a time, into
/// the job's artifacts folder here (sealed with the tenant's key, as the
/// engine writes them), then tells the slot it may report the run done.
pub(super) async fn collect(
    fetch: Fetch,
    dest: ArtifactDest,
    artifacts: Vec<(String, u64)>,
    mut chunks: mpsc::UnboundedReceiver<ArtifactChunk>,
) {
    if let Some(why) = dest.refuses(&artifacts) {
        return fetch.fail(why);
    }
    let folder = dest.folder.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || std::fs::create_dir_all(folder))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    {
        return fetch.fail(format!("creating the artifacts folder: {e}"));
    }
    for (name, len) in artifacts {
        let (folder, key, job) = (dest.folder.clone(), dest.key.clone(), dest.job_id.clone());
        let created = {
            let name = name.clone();
            tokio::task::spawn_blocking(move || {
                ArtifactWriter::create(&folder, &name, key.as_deref(), &job)
            })
            .await
        };
        let mut out = match created {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return fetch.fail(format!("creating {name}: {e}")),
            Err(_) => return,
        };
        let mut offset = 0;
        while offset < len {
            let _ = fetch.slot.send_message(ToWorker::FetchArtifact {
                ticket: fetch.ticket,
                name: name.clone(),
                offset,
                max: CHUNK_BYTES,
            });
            // The run was dropped (cancelled, abandoned, its node gone).
            let Some(chunk) = chunks.recv().await else {
                return;
            };
            if chunk.name != name || chunk.offset != offset || chunk.data.is_empty() {
                return fetch.fail(format!("{name} ended early at byte {offset} of {len}"));
            }
            offset += chunk.data.len() as u64;
            let wrote =
                tokio::task::spawn_blocking(move || out.write_all(&chunk.data).map(|_| out)).await;
            out = match wrote {
                Ok(Ok(out)) => out,
                Ok(Err(e)) => return fetch.fail(format!("writing {name}: {e}")),
                Err(_) => return,
            };
        }
        match tokio::task::spawn_blocking(move || out.commit()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return fetch.fail(format!("writing {name}: {e}")),
            Err(_) => return,
        }
        metrics::counter!("murmur_cluster_artifact_bytes_received_total").increment(len);
    }
    let _ = fetch.slot.send_message(ToWorker::Collected {
        ticket: fetch.ticket,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(max_s: Option<f64>) -> ArtifactDest {
        ArtifactDest {
            folder: PathBuf::from("/nowhere"),
            key: None,
            job_id: "j1".into(),
            max_stem_bytes: max_s.map(ArtifactDest::stem_bytes_for),
        }
    }

    #[test]
    fn only_the_stems_a_job_can_make_are_fetched() {
        // 60 s of stereo 16-bit at 44.1 kHz, and its header.
        let minute = 60 * 44_100 * 4 + 44;
        let stems = |len: u64| {
            vec![
                ("vocals".to_string(), len),
                ("accompaniment".to_string(), len),
            ]
        };
        assert_eq!(dest(Some(60.0)).refuses(&stems(minute)), None);
        assert_eq!(dest(None).refuses(&stems(u64::MAX)), None);
        let too_long = dest(Some(60.0)).refuses(&stems(minute + 2 * 44_100 * 4));
        assert!(too_long.is_some_and(|w| w.contains("more than")));
        for name in ["../../etc/passwd", "model", "Vocals", ""] {
            let got = dest(Some(60.0)).refuses(&[(name.to_string(), 10)]);
            assert!(got.is_some(), "{name:?} accepted");
        }
    }
}
