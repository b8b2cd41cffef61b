//! `murmur transcribe` and `murmur models`: the speech engine from the
//! command line, through the same engine the service runs.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use murmur::config::Settings;
use murmur_actors::job::JobStage;
use murmur_actors::params::JobParams;
use murmur_actors::{Engine, WorkError, WorkOutput, WorkRequest, WorkSink};
use murmur_engine::{ModelEngine, ModelEngineConfig};
use murmur_models::fetch::{self, InstallEvent};
use murmur_models::formats::{self, Format, SubtitleOptions};
use murmur_models::transcript::Transcript;

#[derive(Args)]
pub struct TranscribeArgs {
    /// The audio file (WAV, MP3, FLAC, Ogg Vorbis, AAC/M4A).
    file: PathBuf,
    /// Whisper model (tiny, tiny.en, base, base.en, small, ...).
    #[arg(long)]
    model: Option<String>,
    /// transcribe, or translate into English.
    #[arg(long, default_value = "transcribe")]
    task: String,
    /// Spoken language (ISO 639-1, e.g. "de"); detected when omitted.
    #[arg(long)]
    language: Option<String>,
    /// Decode the whole file instead of only the speech VAD finds.
    #[arg(long)]
    no_vad: bool,
    /// Label speakers (who spoke when).
    #[arg(long)]
    diarize: bool,
    /// Time every word (`words` per segment in the JSON output).
    #[arg(long)]
    word_timestamps: bool,
    /// Remove background music before transcribing.
    #[arg(long)]
    separate_bgm: bool,
    /// Beams searched at temperature 0 (1 to 10; 1 is greedy decoding).
    /// Default 1; faster-whisper and Whisper-WebUI search 5.
    #[arg(long)]
    beam_size: Option<u32>,
    /// Decode this many 30 s chunks of speech together (1 to 16), as
    /// faster-whisper's batched pipeline does; default 1, Whisper's
    /// sequential loop.
    #[arg(long)]
    batch_size: Option<u32>,
    /// How the Whisper weights are stored and multiplied: int8, f16, f32 or
    /// default (the device's; see docs/models.md). Overrides
    /// `models.compute_type`.
    #[arg(long)]
    compute_type: Option<String>,
    /// Under int8, the encoder's linear layers in int8 too, on a CPU with
    /// AVX-512 VNNI (the default there): `--int8-encoder=false` keeps them
    /// in float32 (docs/models.md). Overrides `models.int8_encoder`.
    // `=` required, so that `--int8-encoder FILE` still reads FILE as the
    // audio.
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    int8_encoder: Option<bool>,
    /// Decode by faster-whisper's rules alone, without Murmur's repetition
    /// guard (for comparing the two).
    #[arg(long)]
    no_repetition_guard: bool,
    /// Samples drawn at each fallback temperature above 0, the likeliest
    /// kept (1 to 10). Default 1.
    #[arg(long)]
    best_of: Option<u32>,
    /// The first temperature tried (0 to 1); windows whose result fails
    /// the quality checks are decoded again at higher ones. Default 0.
    #[arg(long)]
    temperature: Option<f64>,
    /// Output format: json, srt, vtt, txt, tsv.
    #[arg(long, default_value = "txt")]
    format: String,
    /// srt/vtt: at most this many characters on a subtitle line.
    #[arg(long)]
    max_line_width: Option<usize>,
    /// srt/vtt: at most this many lines in a cue; cues then run across
    /// segments (times each word).
    #[arg(long)]
    max_line_count: Option<usize>,
    /// srt/vtt: at most this many words on a line; alone, one line per cue
    /// (times each word).
    #[arg(long)]
    max_words_per_line: Option<usize>,
    /// srt/vtt: one cue per word, that word underlined (times each word).
    #[arg(long)]
    highlight_words: bool,
    /// Write the result here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub struct SeparateArgs {
    /// The audio file (WAV, MP3, FLAC, Ogg Vorbis, AAC/M4A).
    file: PathBuf,
    /// Folder to write vocals.wav and accompaniment.wav into.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Download, check and install models (all known ones when none named).
    Fetch { names: Vec<String> },
    /// Show installed models, and how to install the others.
    List,
    /// Install a Whisper model from a directory you have: a faster-whisper
    /// (CTranslate2) model directory or a Hugging Face transformers one.
    Import {
        /// The model directory.
        dir: std::path::PathBuf,
        /// The name to install it as (default: the size its dimensions say,
        /// e.g. small or large-v3).
        #[arg(long)]
        name: Option<String>,
    },
}

/// Drives a progress bar on stderr from the engine's reports.
struct BarSink {
    bar: ProgressBar,
}

impl WorkSink for BarSink {
    fn stage(&mut self, stage: JobStage) {
        self.bar.set_message(stage.as_str());
    }
    fn progress(&mut self, fraction: f64) {
        self.bar.set_position((fraction * 1000.0) as u64);
    }
    fn checkpoint(&mut self, _state: serde_json::Value) {}
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Runs one job's work on this machine, with a progress bar, through the
/// engine the service uses (models are fetched on first use).
async fn run_engine(
    settings: &Settings,
    file: &std::path::Path,
    params: JobParams,
    artifacts: Option<PathBuf>,
) -> anyhow::Result<WorkOutput> {
    if !file.is_file() {
        bail!("{} is not a file", file.display());
    }
    let device = murmur_models::device::device_from_str(&settings.models.device)?;
    let compute_type = settings.compute_type(&device)?;
    let engine = Arc::new(ModelEngine::new(
        ModelEngineConfig {
            models_dir: settings.models_dir(),
            cache_dir: settings.cache_dir(),
            max_loaded_models: 1,
            fetch_missing: true,
            compute_type,
            int8_encoder: settings.models.int8_encoder,
        },
        device,
    ));
    let request = WorkRequest {
        job_id: "cli".into(),
        tenant_id: "cli".into(),
        audio: file.to_path_buf(),
        params,
        checkpoint: None,
        artifacts,
        audio_limit: None,
        sealing: None,
    };
    let progress = bar(
        1000,
        "{spinner} {msg:>10} [{wide_bar}] {percent:>3}% {elapsed}",
    );
    let mut sink = BarSink {
        bar: progress.clone(),
    };
    let output = tokio::task::spawn_blocking(move || {
        let cancel = AtomicBool::new(false);
        engine.run(&request, &mut sink, &cancel)
    })
    .await
    .context("the worker thread failed")?;
    progress.finish_and_clear();
    output.map_err(|e| match e {
        WorkError::InvalidInput(m) | WorkError::Transient(m) => anyhow::anyhow!(m),
        WorkError::Cancelled => anyhow::anyhow!("cancelled"),
    })
}

/// `murmur separate FILE --out DIR`: vocals and accompaniment as WAV files.
pub async fn separate(settings: &Settings, args: SeparateArgs) -> anyhow::Result<()> {
    let defaults = JobParams::defaults(&settings.models.default_model);
    let params = JobParams::merged(
        &defaults,
        &serde_json::json!({"job_type": "bgm_separation"}),
    )?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    run_engine(settings, &args.file, params, Some(args.out.clone())).await?;
    for stem in ["vocals", "accompaniment"] {
        println!("{}", args.out.join(format!("{stem}.wav")).display());
    }
    Ok(())
}

pub async fn transcribe(settings: &Settings, args: TranscribeArgs) -> anyhow::Result<()> {
    let format: Format = args.format.parse()?;
    let mut settings = settings.clone();
    if let Some(compute_type) = &args.compute_type {
        settings.models.compute_type = compute_type.clone();
    }
    if let Some(int8_encoder) = args.int8_encoder {
        settings.models.int8_encoder = int8_encoder;
    }
    let settings = &settings;
    let subtitles = SubtitleOptions {
        max_line_width: args.max_line_width,
        max_line_count: args.max_line_count,
        max_words_per_line: args.max_words_per_line,
        highlight_words: args.highlight_words,
    };
    // Checked before the model runs, not after; a layout from words has
    // the words timed.
    formats::check_options(format, &subtitles)?;
    let needs_words = subtitles.needs_words();
    let defaults = JobParams::defaults(&settings.models.default_model);
    let mut overrides = serde_json::json!({
        "model": args.model.unwrap_or(defaults.model.clone()),
        "task": args.task,
        "language": args.language,
        "vad": {"enabled": !args.no_vad},
        "diarize": {"enabled": args.diarize},
        "separate_bgm": {"enabled": args.separate_bgm},
        "word_timestamps": args.word_timestamps || needs_words,
        "repetition_guard": !args.no_repetition_guard,
    });
    if let Some(beams) = args.beam_size {
        overrides["beam_size"] = beams.into();
    }
    if let Some(n) = args.best_of {
        overrides["best_of"] = n.into();
    }
    if let Some(n) = args.batch_size {
        overrides["batch_size"] = n.into();
    }
    if let Some(t) = args.temperature {
        overrides["temperature"] = t.into();
    }
    let params = JobParams::merged(&defaults, &overrides)?;
    let output = run_engine(settings, &args.file, params, None).await?;
    let transcript: Transcript = serde_json::from_value(output.result)?;
    let text = formats::render_with(&transcript, format, &subtitles)?;
    match args.out {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(())
}

pub fn models(settings: &Settings, command: ModelsCommand) -> anyhow::Result<()> {
    let models_dir = settings.models_dir();
    match command {
        ModelsCommand::List => {
            let installed = fetch::list_installed(&models_dir)?;
            if installed.is_empty() {
                println!("no models installed in {}", models_dir.display());
            }
            for m in installed {
                let sources: Vec<String> = m
                    .sources
                    .iter()
                    .map(|s| format!("{}=={}", s.package, s.version))
                    .collect();
                println!(
                    "{:<16} {:<12?} {}  ({})",
                    m.name,
                    m.kind,
                    m.path.display(),
                    sources.join(", ")
                );
            }
            let missing: Vec<&str> = murmur_actors::params::MODEL_NAMES
                .iter()
                .copied()
                .chain(fetch::catalogue().iter().map(|e| e.name))
                .filter(|n| fetch::installed(&models_dir, n).is_none())
                .collect();
            if !missing.is_empty() {
                println!("\nnot installed:");
                for name in missing {
                    println!("{name:<16} {}", murmur_models::import::install_hint(name));
                }
            }
            Ok(())
        }
        ModelsCommand::Import { dir, name } => {
            if let Some(n) = &name {
                anyhow::ensure!(
                    murmur_actors::params::MODEL_NAMES.contains(&n.as_str()),
                    "jobs can only ask for {}; import as one of these",
                    murmur_actors::params::MODEL_NAMES.join(", ")
                );
            }
            let model = murmur_models::import::import(&dir, name.as_deref(), &models_dir)
                .with_context(|| format!("importing {}", dir.display()))?;
            println!("{:<16} {}", model.name, model.path.display());
            Ok(())
        }
        ModelsCommand::Fetch { names } => {
            let names: Vec<String> = if names.is_empty() {
                fetch::catalogue()
                    .iter()
                    .map(|e| e.name.to_string())
                    .collect()
            } else {
                names
            };
            let cache = settings.cache_dir();
            for name in names {
                let spinner = bar(0, "{spinner} {msg}");
                spinner.enable_steady_tick(std::time::Duration::from_millis(120));
                let result = fetch::install(&name, &models_dir, &cache, &mut |event| match event {
                    InstallEvent::UpToDate { name, .. } => {
                        spinner.set_message(format!("{name}: up to date"))
                    }
                    InstallEvent::Fetching {
                        package,
                        step,
                        steps,
                    } => {
                        spinner.set_message(format!("{name}: fetching {package} ({step}/{steps})"))
                    }
                    InstallEvent::Converting { name } => {
                        spinner.set_message(format!("{name}: converting"))
                    }
                    InstallEvent::Installed { name, .. } => {
                        spinner.set_message(format!("{name}: installed"))
                    }
                });
                spinner.finish_and_clear();
                let model = result.with_context(|| format!("installing {name}"))?;
                println!("{:<16} {}", model.name, model.path.display());
            }
            Ok(())
        }
    }
}
