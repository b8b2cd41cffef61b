// What the Transcribe, Run Workflow and tool nodes share: upload, submit,
// follow, format.

import { AudioFile, readAudioInput } from './audio'
import { MurmurClient, MurmurJob, ResultFormat } from './client'
import { describeJobEnd, ErrorContext, MurmurError } from './errors'
import { INodeOptionsValue } from './Interface'

/** The node's output formats: `text` is the plain transcript, the others Murmur's own. */
export type OutputFormat = 'text' | 'json' | 'srt' | 'vtt' | 'tsv'

export const OUTPUT_FORMATS: INodeOptionsValue[] = [
    { label: 'Text', name: 'text', description: 'The transcript as plain text' },
    { label: 'JSON', name: 'json', description: 'Language, duration and timed segments (words with Word Timestamps, speakers when diarized)' },
    { label: 'SRT subtitles', name: 'srt' },
    { label: 'WebVTT subtitles', name: 'vtt' },
    { label: 'TSV (start, end, text)', name: 'tsv' }
]

export function outputFormat(value: unknown): OutputFormat {
    const v = String(value || 'text')
    if (['text', 'json', 'srt', 'vtt', 'tsv'].includes(v)) return v as OutputFormat
    throw new Error(`Murmur: unknown output format "${v}"; use text, json, srt, vtt or tsv`)
}

/** The Beam Size input (Transcribe and its tool): job parameter `beam_size`. */
export const BEAM_INPUT = {
    label: 'Beam Size',
    name: 'beamSize',
    type: 'number',
    optional: true,
    additionalParams: true,
    placeholder: '1',
    description: 'Beams searched while decoding: 1 (the default) is greedy and fastest; 5 searches as Whisper-WebUI does, at about 1.5 times the time. Plans bound it (basic: 5)'
}

/** Subtitle layout options (`GET /v1/jobs/{id}/result`), for SRT and WebVTT outputs. */
export type SubtitleLayout = {
    max_line_width?: number
    max_line_count?: number
    max_words_per_line?: number
    highlight_words?: boolean
}

/** The Transcribe node's subtitle layout inputs (under "Additional Parameters"). */
export const SUBTITLE_INPUTS = [
    {
        label: 'Max Line Width',
        name: 'maxLineWidth',
        type: 'number',
        optional: true,
        additionalParams: true,
        description: 'SRT/WebVTT: at most this many characters on a subtitle line'
    },
    {
        label: 'Max Lines per Cue',
        name: 'maxLineCount',
        type: 'number',
        optional: true,
        additionalParams: true,
        description: 'SRT/WebVTT: at most this many lines in a cue; cues then run across segments (times each word)'
    },
    {
        label: 'Max Words per Line',
        name: 'maxWordsPerLine',
        type: 'number',
        optional: true,
        additionalParams: true,
        description: 'SRT/WebVTT: at most this many words on a line; alone, one line per cue, so 1 gives one cue per word (times each word)'
    },
    {
        label: 'Highlight Words',
        name: 'highlightWords',
        type: 'boolean',
        default: false,
        optional: true,
        additionalParams: true,
        description: 'SRT/WebVTT: one cue per word, that word underlined (times each word)'
    }
]

/** The subtitle layout from the node's inputs; errors name the input. */
export function subtitleLayout(inputs: Record<string, any>): SubtitleLayout {
    const layout: SubtitleLayout = {}
    const count = (label: string, value: unknown): number | undefined => {
        if (value === undefined || value === null || String(value).trim() === '') return undefined
        const n = Number(value)
        if (!Number.isInteger(n) || n < 1 || n > 1000) throw new Error(`Murmur: ${label} must be a whole number from 1 to 1000 (got "${value}")`)
        return n
    }
    const width = count('Max Line Width', inputs.maxLineWidth)
    const lines = count('Max Lines per Cue', inputs.maxLineCount)
    const words = count('Max Words per Line', inputs.maxWordsPerLine)
    if (width !== undefined) layout.max_line_width = width
    if (lines !== undefined) layout.max_line_count = lines
    if (words !== undefined) layout.max_words_per_line = words
    if (truthy(inputs.highlightWords, false)) layout.highlight_words = true
    return layout
}

/** Whether a layout is laid out from words (and so needs them timed). */
export function layoutNeedsWords(layout: SubtitleLayout): boolean {
    return layout.max_line_count !== undefined || layout.max_words_per_line !== undefined || layout.highlight_words === true
}

export function truthy(value: unknown, fallback: boolean): boolean {
    if (value === undefined || value === null || value === '') return fallback
    if (typeof value === 'boolean') return value
    return String(value).toLowerCase() === 'true'
}

export function timeoutMs(value: unknown): number {
    const s = Number(value)
    return Number.isFinite(s) && s > 0 ? s * 1000 : 15 * 60_000
}

/** Renders a completed job's result in a node output format (subtitles laid out by `layout`). */
export async function formatResult(client: MurmurClient, job: MurmurJob, format: OutputFormat, layout: SubtitleLayout = {}): Promise<string> {
    if (format === 'text') {
        const body = JSON.parse(await client.result(job.id, 'json'))
        if (typeof body.text === 'string') return body.text.trim()
        // vad and bgm_separation jobs have no transcript: give their JSON.
        return JSON.stringify(body, null, 2)
    }
    if (format === 'json') return JSON.stringify(JSON.parse(await client.result(job.id, 'json')), null, 2)
    if (format === 'srt' || format === 'vtt') return client.result(job.id, format, layout)
    return client.result(job.id, format as ResultFormat)
}

/** What a node asks for: the job's parameters (or workflow) and how its result comes back. */
export interface JobRequest {
    params: Record<string, any>
    workflowId?: string
    format: OutputFormat
    subtitles?: SubtitleLayout
    timeoutMs?: number
    pollOnly?: boolean
}

export interface RunOutcome {
    fileId: string
    job: MurmurJob
    output: string
    via: 'ws' | 'poll'
}

/** Uploads one audio file, runs one job on it and renders the result. */
export async function transcribeFile(
    client: MurmurClient,
    file: AudioFile,
    request: JobRequest,
    ctx: ErrorContext = {}
): Promise<RunOutcome> {
    const uploaded = await client.uploadFile(file)
    return runOnFile(client, uploaded.id, request, { ...ctx, fileName: file.name })
}

/** Has the server fetch one audio URL, runs one job on it and renders the result. */
export async function transcribeUrl(
    client: MurmurClient,
    url: string,
    request: JobRequest,
    ctx: ErrorContext = {}
): Promise<RunOutcome> {
    const fetched = await client.fetchUrl(url)
    return runOnFile(client, fetched.id, request, { ...ctx, fileName: fetched.name })
}

/** An "Audio URL" input: undefined when empty, an error when not an http(s) URL. */
export function audioUrl(value: unknown): string | undefined {
    const s = String(value ?? '').trim()
    if (!s) return undefined
    let url: URL
    try {
        url = new URL(s)
    } catch {
        throw new Error(`Murmur: the Audio URL "${s}" is not a URL; give the http(s) address of an audio or video file`)
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
        throw new Error(`Murmur: the Audio URL must be http or https (got ${url.protocol})`)
    }
    return s
}

/**
 * Runs a node's audio, in order: the files of its "Audio File" input, then
 * its "Audio URL" (fetched by the server). The outputs, one per source,
 * separated by a blank line.
 */
export async function transcribeInputs(
    client: MurmurClient,
    inputs: Record<string, any>,
    options: Record<string, any> | undefined,
    request: JobRequest,
    ctx: ErrorContext = {}
): Promise<string> {
    const url = audioUrl(inputs.audioUrl)
    const hasFile = typeof inputs.audioFile === 'string' && inputs.audioFile.trim() !== ''
    if (!url && !hasFile) {
        throw new Error('Murmur: no audio was given; upload a file in the node\'s "Audio File" input or give an "Audio URL".')
    }
    const files = hasFile ? await readAudioInput(inputs.audioFile, options) : []
    const outputs: string[] = []
    for (const file of files) outputs.push((await transcribeFile(client, file, request, ctx)).output)
    if (url) outputs.push((await transcribeUrl(client, url, request, ctx)).output)
    return outputs.join('\n\n')
}

/** Runs one job on an uploaded Murmur file and renders the result. */
export async function runOnFile(
    client: MurmurClient,
    fileId: string,
    request: JobRequest,
    ctx: ErrorContext = {}
): Promise<RunOutcome> {
    const submitted = await client.submitJob(fileId, request.params, request.workflowId, ctx)
    const { job, via } = await client.followJob(submitted.id, { timeoutMs: request.timeoutMs, pollOnly: request.pollOnly })
    if (job.status !== 'completed') {
        throw new MurmurError(describeJobEnd(job.status, job.error, job.id), `job_${job.status}`, 0, job.error ?? '')
    }
    return { fileId, job, output: await formatResult(client, job, request.format, request.subtitles), via }
}

/** Job parameters from the Transcribe node's inputs; unset ones keep the server's defaults. */
export function paramsFromInputs(inputs: Record<string, any>): { params: Record<string, any>; ctx: ErrorContext } {
    const params: Record<string, any> = {}
    const model = String(inputs.model ?? '').trim()
    if (model) params.model = model
    const task = String(inputs.task ?? '').trim()
    if (task) {
        if (task !== 'transcribe' && task !== 'translate') throw new Error(`Murmur: task must be transcribe or translate (got "${task}")`)
        params.task = task
    }
    const language = String(inputs.language ?? '').trim()
    if (language && language !== 'auto') params.language = language
    const diarize = truthy(inputs.diarize, false)
    const separateBgm = truthy(inputs.separateBgm, false)
    params.vad = { enabled: truthy(inputs.vad, true) }
    if (truthy(inputs.wordTimestamps, false)) params.word_timestamps = true
    const beam = inputs.beamSize
    if (beam !== undefined && beam !== null && String(beam).trim() !== '') {
        const n = Number(beam)
        if (!Number.isInteger(n) || n < 1 || n > 10) throw new Error(`Murmur: Beam Size must be a whole number from 1 to 10 (got "${beam}")`)
        params.beam_size = n
    }
    params.diarize = { enabled: diarize }
    params.separate_bgm = { enabled: separateBgm }
    return { params, ctx: { model: model || undefined, diarize, separateBgm, translate: task === 'translate' } }
}
