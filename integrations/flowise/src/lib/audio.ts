// Turns a Flowise `file` input into bytes. Flowise passes one of:
//   - a base64 data URI with a filename suffix, as its UI writes it:
//     `data:audio/wav;base64,UklGR...,filename:jfk.wav`
//   - a JSON array of such strings (several files in one input)
//   - `FILE-STORAGE::jfk.wav` or `FILE-STORAGE::["jfk.wav"]` once a saved
//     flow's uploads were moved into Flowise's storage; read with
//     `getFileFromStorage(name, orgId, chatflowid)`.

import { ICommonObject, INodeParams } from './Interface'
import { resolveGetFileFromStorage } from './flowise'

export interface AudioFile {
    name: string
    mime: string
    data: Buffer
}

const MIME_BY_EXT: Record<string, string> = {
    wav: 'audio/wav',
    mp3: 'audio/mpeg',
    m4a: 'audio/mp4',
    mp4: 'audio/mp4',
    aac: 'audio/aac',
    ogg: 'audio/ogg',
    oga: 'audio/ogg',
    opus: 'audio/opus',
    flac: 'audio/flac',
    webm: 'audio/webm'
}

const AUDIO_FILE_TYPES = '.wav, .mp3, .m4a, .mp4, .aac, .ogg, .oga, .opus, .flac, .webm'

/** The audio inputs of the nodes that run jobs: a file and/or a URL (see `run.transcribeInputs`). */
export const AUDIO_INPUTS: INodeParams[] = [
    {
        label: 'Audio File',
        name: 'audioFile',
        type: 'file',
        fileType: AUDIO_FILE_TYPES,
        optional: true
    },
    {
        label: 'Audio URL',
        name: 'audioUrl',
        type: 'string',
        placeholder: 'https://example.com/talk.mp3',
        optional: true,
        acceptVariable: true,
        description: 'Instead of (or after) the file: the http(s) address of an audio or video file, which the Murmur server fetches'
    }
]

function mimeFor(name: string): string {
    const ext = name.split('.').pop()?.toLowerCase() ?? ''
    return MIME_BY_EXT[ext] ?? 'application/octet-stream'
}

/** Decodes one `data:<mime>;base64,<data>[,filename:<name>]` string. */
export function decodeDataUri(value: string): AudioFile {
    const s = value.trim()
    const m = s.match(/^data:([^;,]*)(;[^,]*)?,([^,]*)(?:,filename:(.*))?$/s)
    if (!m) throw new Error('Murmur: the audio input is not a base64 data URI (data:audio/...;base64,...)')
    const [, mimeRaw, attrs, payload, filename] = m
    if (!attrs || !attrs.split(';').includes('base64')) {
        throw new Error('Murmur: the audio data URI is not base64-encoded')
    }
    const data = Buffer.from(payload, 'base64')
    if (data.length === 0) throw new Error('Murmur: the audio input is empty')
    const name = (filename || '').trim() || 'audio'
    return { name, mime: mimeRaw || mimeFor(name), data }
}

function listOf(value: string): string[] {
    const s = value.trim()
    if (s.startsWith('[') && s.endsWith(']')) {
        const parsed = JSON.parse(s)
        if (!Array.isArray(parsed)) throw new Error('Murmur: the audio input is not a list of files')
        return parsed.map(String)
    }
    return [s]
}

/**
 * The audio files of a `file` input, in order. Raises a readable error when
 * the input is empty or cannot be read.
 */
export async function readAudioInput(value: unknown, options: ICommonObject | undefined): Promise<AudioFile[]> {
    if (typeof value !== 'string' || value.trim() === '') {
        throw new Error('Murmur: no audio file was given; upload one in the node\'s "Audio File" input.')
    }
    const s = value.trim()
    if (s.startsWith('FILE-STORAGE::')) {
        const names = listOf(s.slice('FILE-STORAGE::'.length))
        const getFileFromStorage = resolveGetFileFromStorage(options)
        const out: AudioFile[] = []
        for (const name of names) {
            const orgId = options?.orgId as string
            const chatflowid = options?.chatflowid as string
            const data = await getFileFromStorage(name, orgId, chatflowid)
            out.push({ name, mime: mimeFor(name), data: Buffer.from(data) })
        }
        return out
    }
    return listOf(s).map(decodeDataUri)
}
