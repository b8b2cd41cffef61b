//! What crosses between the control node and a worker node: the two
//! message types of the remote actors ([`ToWorker`], [`ToControl`]) and
//! their encoding.
//!
//! Encoding: each message is a ractor "cast" whose variant name is `json`
//! (the message as JSON) or `chunk` (an audio chunk: a JSON header, then
//! the bytes as they are, so audio is not inflated by JSON). Decoding never
//! panics: bytes that do not parse become a `Malformed` message, which the
//! receiver logs and drops (ractor would otherwise stop the actor).
//!
//! Tenant keys never travel: a worker receives the job's audio already
//! opened by the control node, through the session's transport (TLS when
//! configured), and writes no sealed file.

use ractor::message::{BoxedDowncastErr, SerializedMessage};
use serde::{Deserialize, Serialize};

use crate::engine::{WorkError, WorkOutput, WorkRequest};
use crate::job::JobStage;

/// What a worker says it is, answered to [`ToWorker::Describe`]; the
/// operator's view and the pool's choice of worker use it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerInfo {
    /// The worker node's name (`--name`, else its host name).
    pub node: String,
    /// The device its engine runs on (`cpu`, `cuda:0`).
    pub device: String,
    /// Its slot on that node (0 to the node's `models.workers` - 1): a
    /// node's capacity is its number of slots, each one run at a time.
    pub slot: u32,
    /// How its engine stores and multiplies weights (`int8`, `f16`, `f32`).
    #[serde(default)]
    pub compute_type: Option<String>,
    /// The models its engine holds loaded, as of this answer.
    #[serde(default)]
    pub models: Vec<String>,
    /// Whether it still holds a run, as of this answer: a slot whose run
    /// the control node gave up (it went silent, stopped making progress,
    /// or ran past its deadline) takes no new work while this is true.
    #[serde(default)]
    pub busy: bool,
}

/// A finished request as it travels back: the output, or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    Done {
        result: serde_json::Value,
        audio_seconds: f64,
    },
    Cancelled,
    InvalidInput(String),
    Transient(String),
}

impl From<Result<WorkOutput, WorkError>> for Outcome {
    fn from(r: Result<WorkOutput, WorkError>) -> Self {
        match r {
            Ok(out) => Outcome::Done {
                result: out.result,
                audio_seconds: out.audio_seconds,
            },
            Err(WorkError::Cancelled) => Outcome::Cancelled,
            Err(WorkError::InvalidInput(m)) => Outcome::InvalidInput(m),
            Err(WorkError::Transient(m)) => Outcome::Transient(m),
        }
    }
}

impl From<Outcome> for Result<WorkOutput, WorkError> {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Done {
                result,
                audio_seconds,
            } => Ok(WorkOutput {
                result,
                audio_seconds,
            }),
            Outcome::Cancelled => Err(WorkError::Cancelled),
            Outcome::InvalidInput(m) => Err(WorkError::InvalidInput(m)),
            Outcome::Transient(m) => Err(WorkError::Transient(m)),
        }
    }
}

/// Control node to a worker slot.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// Answer with [`ToControl::Described`] naming `key`, the pool's
    /// name for this slot.
    Describe { key: u64 },
    /// Run `request` (its `audio` path means nothing here: the audio comes
    /// in chunks of `audio_bytes` in all, asked for with
    /// [`ToControl::Fetch`]). `ticket` names this run in every report.
    Run {
        ticket: u64,
        request: Box<WorkRequest>,
        audio_bytes: u64,
    },
    /// Bytes of the run's audio from `offset`; empty once past the end.
    #[serde(skip)]
    Chunk {
        ticket: u64,
        offset: u64,
        data: Vec<u8>,
    },
    /// Stop the run at the engine's next check.
    Cancel { ticket: u64 },
    /// Send bytes of the run's artifact `name` (a stem) from `offset`, at
    /// most `max` ([`ToControl::ArtifactChunk`]).
    FetchArtifact {
        ticket: u64,
        name: String,
        offset: u64,
        max: u32,
    },
    /// The control node holds every artifact of the run: end it
    /// ([`ToControl::Finished`]) and drop them.
    Collected { ticket: u64 },
    /// Local to the worker node: time to tell the control node that the
    /// run in progress, if any, is alive ([`ToControl::Alive`]).
    #[serde(skip)]
    Beat,
    /// Local to the worker node: the engine finished `ticket`.
    #[serde(skip)]
    Ended { ticket: u64, outcome: Outcome },
    /// Bytes that did not decode (logged and dropped).
    #[serde(skip)]
    Malformed(String),
}

/// A worker slot to the control node (its hub actor).
#[derive(Debug, Serialize, Deserialize)]
pub enum ToControl {
    /// The slot the pool calls `key` is `info`.
    Described {
        key: u64,
        info: WorkerInfo,
    },
    /// Send the run's audio from `offset`, at most `max` bytes.
    Fetch {
        ticket: u64,
        offset: u64,
        max: u32,
    },
    Stage {
        ticket: u64,
        stage: JobStage,
    },
    Progress {
        ticket: u64,
        fraction: f64,
    },
    Checkpoint {
        ticket: u64,
        state: serde_json::Value,
    },
    /// The slot is alive and still on run `ticket` (sent every
    /// [`super::HEARTBEAT`] while a run lasts: a run that stays silent
    /// much longer is given up, see `cluster.silence_secs`).
    Alive {
        ticket: u64,
    },
    /// The run succeeded and produced these artifacts (stems, by name,
    /// with their lengths): the control node fetches each, then says
    /// [`ToWorker::Collected`]; `Finished` follows.
    Produced {
        ticket: u64,
        artifacts: Vec<(String, u64)>,
    },
    /// Bytes of artifact `name` from `offset`; empty past its end.
    #[serde(skip)]
    ArtifactChunk {
        ticket: u64,
        name: String,
        offset: u64,
        data: Vec<u8>,
    },
    /// The run ended; the last report of a ticket.
    Finished {
        ticket: u64,
        outcome: Outcome,
    },
    /// Bytes that did not decode (logged and dropped).
    #[serde(skip)]
    Malformed(String),
}

/// The header of a `chunk` cast (`name`: an artifact's, from a worker).
#[derive(Serialize, Deserialize)]
struct ChunkHeader {
    ticket: u64,
    offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// A `chunk` cast: its header's length, the header as JSON, the bytes.
fn chunk_cast(header: &ChunkHeader, data: &[u8]) -> Result<SerializedMessage, BoxedDowncastErr> {
    let header = serde_json::to_vec(header).map_err(|_| BoxedDowncastErr)?;
    let mut args = Vec::with_capacity(4 + header.len() + data.len());
    args.extend_from_slice(&(header.len() as u32).to_be_bytes());
    args.extend_from_slice(&header);
    args.extend_from_slice(data);
    Ok(cast("chunk", args))
}

/// The header and bytes of a `chunk` cast.
fn split_chunk(mut args: Vec<u8>) -> Result<(ChunkHeader, Vec<u8>), String> {
    let len = args
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("chunk shorter than its header length")?;
    let header = args
        .get(4..4 + len)
        .ok_or("chunk shorter than its header")?;
    let header: ChunkHeader = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let data = args.split_off(4 + len);
    Ok((header, data))
}

fn cast(variant: &str, args: Vec<u8>) -> SerializedMessage {
    SerializedMessage::Cast {
        variant: variant.to_string(),
        args,
        metadata: None,
    }
}

fn json_cast<T: Serialize>(msg: &T) -> Result<SerializedMessage, BoxedDowncastErr> {
    serde_json::to_vec(msg)
        .map(|args| cast("json", args))
        .map_err(|_| BoxedDowncastErr)
}

impl ractor::Message for ToWorker {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        match self {
            ToWorker::Chunk {
                ticket,
                offset,
                data,
            } => chunk_cast(
                &ChunkHeader {
                    ticket,
                    offset,
                    name: None,
                },
                &data,
            ),
            ToWorker::Ended { .. } | ToWorker::Beat | ToWorker::Malformed(_) => {
                Err(BoxedDowncastErr)
            }
            other => json_cast(&other),
        }
    }

    fn deserialize(bytes: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        let SerializedMessage::Cast { variant, args, .. } = bytes else {
            return Ok(ToWorker::Malformed("not a cast".into()));
        };
        Ok(match variant.as_str() {
            "chunk" => decode_chunk(args).unwrap_or_else(ToWorker::Malformed),
            "json" => {
                serde_json::from_slice(&args).unwrap_or_else(|e| ToWorker::Malformed(e.to_string()))
            }
            other => ToWorker::Malformed(format!("unknown variant {other:?}")),
        })
    }
}

fn decode_chunk(args: Vec<u8>) -> Result<ToWorker, String> {
    let (header, data) = split_chunk(args)?;
    Ok(ToWorker::Chunk {
        ticket: header.ticket,
        offset: header.offset,
        data,
    })
}

impl ractor::Message for ToControl {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        match self {
            ToControl::ArtifactChunk {
                ticket,
                name,
                offset,
                data,
            } => chunk_cast(
                &ChunkHeader {
                    ticket,
                    offset,
                    name: Some(name),
                },
                &data,
            ),
            ToControl::Malformed(_) => Err(BoxedDowncastErr),
            other => json_cast(&other),
        }
    }

    fn deserialize(bytes: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        let SerializedMessage::Cast { variant, args, .. } = bytes else {
            return Ok(ToControl::Malformed("not a cast".into()));
        };
        Ok(match variant.as_str() {
            "json" => serde_json::from_slice(&args)
                .unwrap_or_else(|e| ToControl::Malformed(e.to_string())),
            "chunk" => match split_chunk(args) {
                Ok((
                    ChunkHeader {
                        ticket,
                        offset,
                        name: Some(name),
                    },
                    data,
                )) => ToControl::ArtifactChunk {
                    ticket,
                    name,
                    offset,
                    data,
                },
                Ok(_) => ToControl::Malformed("an artifact chunk without its name".into()),
                Err(e) => ToControl::Malformed(e),
            },
            other => ToControl::Malformed(format!("unknown variant {other:?}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use ractor::Message;

    use super::*;

    #[test]
    fn chunks_keep_their_bytes_and_bad_bytes_become_malformed() {
        let data: Vec<u8> = (0..=255).cycle().take(70_000).collect();
        let wire = Message::serialize(ToWorker::Chunk {
            ticket: 7,
            offset: 65_536,
            data: data.clone(),
        })
        .unwrap();
        match <ToWorker as Message>::deserialize(wire).unwrap() {
            ToWorker::Chunk {
                ticket,
                offset,
                data: got,
            } => assert_eq!((ticket, offset, got), (7, 65_536, data)),
            other => panic!("{other:?}"),
        }
        for args in [vec![], vec![0, 0, 0, 9, b'{'], vec![0, 0, 0, 2, b'{', b'}']] {
            let got = <ToWorker as Message>::deserialize(cast("chunk", args)).unwrap();
            assert!(matches!(got, ToWorker::Malformed(_)), "{got:?}");
        }
        let got =
            <ToControl as Message>::deserialize(cast("json", b"{\"Fetch\":1}".to_vec())).unwrap();
        assert!(matches!(got, ToControl::Malformed(_)), "{got:?}");
    }

    #[test]
    fn artifact_chunks_keep_their_name_and_bytes() {
        let data: Vec<u8> = (0..=255).cycle().take(5_000).collect();
        let wire = Message::serialize(ToControl::ArtifactChunk {
            ticket: 9,
            name: "vocals".into(),
            offset: 1 << 20,
            data: data.clone(),
        })
        .unwrap();
        match <ToControl as Message>::deserialize(wire).unwrap() {
            ToControl::ArtifactChunk {
                ticket,
                name,
                offset,
                data: got,
            } => assert_eq!(
                (ticket, name.as_str(), offset, got),
                (9, "vocals", 1 << 20, data)
            ),
            other => panic!("{other:?}"),
        }
        // An audio chunk's header (no name) is not an artifact's.
        let audio = Message::serialize(ToWorker::Chunk {
            ticket: 1,
            offset: 0,
            data: vec![1, 2, 3],
        })
        .unwrap();
        let got = <ToControl as Message>::deserialize(audio).unwrap();
        assert!(matches!(got, ToControl::Malformed(_)), "{got:?}");
    }

    #[test]
    fn reports_round_trip_as_json() {
        let wire = Message::serialize(ToControl::Finished {
            ticket: 3,
            outcome: Outcome::Transient("gone".into()),
        })
        .unwrap();
        match <ToControl as Message>::deserialize(wire).unwrap() {
            ToControl::Finished {
                ticket: 3,
                outcome: Outcome::Transient(m),
            } => assert_eq!(m, "gone"),
            other => panic!("{other:?}"),
        }
    }
}
