// A small client for the Murmur HTTP + WebSocket API (docs/API.md).

import WebSocket from 'ws'
import { AudioFile } from './audio'
import { describeJobEnd, describeProblem, ErrorContext, MurmurError, Problem } from './errors'
import { MurmurConnection } from './flowise'

export interface MurmurModel {
    id: string
    installed: boolean
    available: boolean
    allowed: boolean
    default: boolean
    english_only: boolean
}

export interface MurmurWorkflow {
    id: string
    name: string
    params: Record<string, any>
}

export interface MurmurFile {
    id: string
    name: string
    size: number
    duration_s: number | null
}

export interface MurmurJob {
    id: string
    file_id: string
    workflow_id: string | null
    job_type?: string
    params: Record<string, any>
    status: 'queued' | 'running' | 'completed' | 'failed' | 'cancelled'
    stage: string | null
    progress: number
    attempts: number
    error: string | null
    created_at: string
    started_at: string | null
    finished_at: string | null
}

export interface MurmurEvent {
    seq: number
    job_id: string
    type: string
    status: MurmurJob['status']
    stage: string | null
    progress: number
    at: string
    error?: string
}

/** The Murmur result formats (`GET /v1/jobs/{id}/result?format=`). */
export type ResultFormat = 'json' | 'srt' | 'vtt' | 'txt' | 'tsv'

export const FINISHED = new Set(['completed', 'failed', 'cancelled'])

export interface FollowOptions {
    /** Give up after this many milliseconds. */
    timeoutMs?: number
    /** Polling period of the fallback. */
    pollMs?: number
    /** Skip the WebSocket and poll only. */
    pollOnly?: boolean
    /** Called with every event seen (for progress reporting and tests). */
    onEvent?: (event: MurmurEvent, via: 'ws' | 'poll') => void
}

export interface FollowOutcome {
    job: MurmurJob
    /** How the end of the job was learnt. */
    via: 'ws' | 'poll'
    events: MurmurEvent[]
}

function sleep(ms: number): Promise<void> {
    return new Promise((r) => setTimeout(r, ms))
}

export class MurmurClient {
    readonly baseUrl: string
    private readonly apiKey: string

    constructor(conn: MurmurConnection) {
        this.baseUrl = conn.baseUrl.replace(/\/+$/, '')
        this.apiKey = conn.apiKey
    }

    private headers(extra: Record<string, string> = {}): Record<string, string> {
        return { authorization: `Bearer ${this.apiKey}`, ...extra }
    }

    /** One request; a problem answer becomes a MurmurError with a readable message. */
    async request(method: string, path: string, init: { body?: any; json?: unknown; ctx?: ErrorContext } = {}): Promise<Response> {
        const headers = this.headers(init.json !== undefined ? { 'content-type': 'application/json' } : {})
        const body = init.json !== undefined ? JSON.stringify(init.json) : init.body
        let res: Response
        for (let attempt = 0; ; attempt++) {
            try {
                res = await fetch(`${this.baseUrl}${path}`, { method, headers, body })
            } catch (e: any) {
                const cause = e?.cause?.code || e?.cause?.message || e?.message || String(e)
                throw new MurmurError(
                    `Could not reach Murmur at ${this.baseUrl} (${cause}). Check the "Murmur API" credential's Base URL and that the server is running.`,
                    'network',
                    0,
                    String(cause)
                )
            }
            // A Murmur server under heavy CPU load has been seen to answer a
            // valid key with 401 "malformed token" (about 1 request in 600 at
            // a load average of 9 on 2 cores: its token check has a 20 ms run
            // limit). A 401 is decided before anything is applied, so asking
            // again is safe for every request; a really bad key still fails,
            // 0.75 s later.
            if (res.status !== 401 || attempt >= 2) break
            await res.arrayBuffer().catch(() => undefined)
            await sleep(250 * (attempt + 1))
        }
        if (!res.ok) {
            const text = await res.text()
            let problem: Problem = {}
            try {
                problem = JSON.parse(text)
            } catch {
                problem = { detail: text.slice(0, 500) }
            }
            const ctx = { baseUrl: this.baseUrl, ...(init.ctx ?? {}) }
            throw new MurmurError(describeProblem(res.status, problem, ctx), problem.code ?? `http_${res.status}`, res.status, problem.detail ?? '')
        }
        return res
    }

    async json<T>(method: string, path: string, init: { json?: unknown; ctx?: ErrorContext } = {}): Promise<T> {
        const res = await this.request(method, path, init)
        return (await res.json()) as T
    }

    async listModels(): Promise<MurmurModel[]> {
        const body = await this.json<{ items: MurmurModel[] }>('GET', '/v1/models', { ctx: { action: 'list models' } })
        return body.items
    }

    async listWorkflows(): Promise<MurmurWorkflow[]> {
        const out: MurmurWorkflow[] = []
        let cursor: string | null = null
        for (let page = 0; page < 50; page++) {
            const q: string = cursor ? `?limit=100&cursor=${encodeURIComponent(cursor)}` : '?limit=100'
            const body: { items: MurmurWorkflow[]; next_cursor: string | null } = await this.json('GET', `/v1/workflows${q}`, {
                ctx: { action: 'list workflows' }
            })
            out.push(...body.items)
            cursor = body.next_cursor
            if (!cursor) break
        }
        return out
    }

    async uploadFile(file: AudioFile): Promise<MurmurFile> {
        const form = new FormData()
        form.append('file', new Blob([file.data], { type: file.mime }), file.name)
        try {
            return await this.json<MurmurFile>('POST', '/v1/files', { body: form, ctx: { action: 'upload the audio', fileName: file.name } } as any)
        } catch (e) {
            // A server that refuses an upload early (a bad key answers 401
            // before the body is read) may close the connection while the body
            // is still being sent: the client then sees EPIPE/ECONNRESET, not
            // the answer. Ask a cheap question to learn the real reason.
            if (e instanceof MurmurError && e.code === 'network') {
                await this.json('GET', '/v1/me', { ctx: { action: 'upload the audio' } })
            }
            throw e
        }
    }

    /** Has the server fetch audio from an http(s) URL (its SSRF guard and the plan's limits apply). */
    async fetchUrl(url: string): Promise<MurmurFile> {
        return this.json<MurmurFile>('POST', '/v1/files', { json: { url }, ctx: { action: 'fetch the audio URL', fileName: url } })
    }

    async submitJob(fileId: string, params: Record<string, any>, workflowId?: string, ctx: ErrorContext = {}): Promise<MurmurJob> {
        const body: Record<string, any> = { file_id: fileId, params }
        if (workflowId) body.workflow_id = workflowId
        return this.json<MurmurJob>('POST', '/v1/jobs', { json: body, ctx: { action: 'start a transcription job', ...ctx } })
    }

    async getJob(id: string): Promise<MurmurJob> {
        return this.json<MurmurJob>('GET', `/v1/jobs/${encodeURIComponent(id)}`, { ctx: { action: 'read the job', jobId: id } })
    }

    async events(id: string, after: number): Promise<MurmurEvent[]> {
        const body = await this.json<{ items: MurmurEvent[] }>('GET', `/v1/jobs/${encodeURIComponent(id)}/events?after=${after}`, {
            ctx: { action: 'read the job events', jobId: id }
        })
        return body.items
    }

    /** A result; `layout` holds subtitle layout query parameters (SRT and WebVTT only). */
    async result(id: string, format: ResultFormat, layout: { [name: string]: number | boolean | undefined } = {}): Promise<string> {
        const query = new URLSearchParams({ format })
        for (const [k, v] of Object.entries(layout)) if (v !== undefined) query.set(k, String(v))
        const res = await this.request('GET', `/v1/jobs/${encodeURIComponent(id)}/result?${query}`, {
            ctx: { action: 'read the job result', jobId: id }
        })
        return res.text()
    }

    /** The WebSocket URL of `/v1/ws`. */
    wsUrl(): string {
        const u = new URL(`${this.baseUrl}/v1/ws`)
        u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:'
        return u.toString()
    }

    /**
     * Follows a job to its end over `/v1/ws` (subscribe `job:<id>` with
     * `after`), falling back to polling `GET /v1/jobs/{id}/events?after=` if
     * the socket cannot be opened or drops. Resolves with the final job.
     */
    async followJob(jobId: string, opts: FollowOptions = {}): Promise<FollowOutcome> {
        const deadline = Date.now() + (opts.timeoutMs ?? 15 * 60_000)
        const events: MurmurEvent[] = []
        let lastSeq = 0
        const seen = (e: MurmurEvent, via: 'ws' | 'poll') => {
            if (e.seq <= lastSeq) return
            lastSeq = e.seq
            events.push(e)
            opts.onEvent?.(e, via)
        }
        if (!opts.pollOnly) {
            const ended = await this.followOverSocket(jobId, deadline, () => lastSeq, seen)
            if (ended) return { job: await this.steady(() => this.getJob(jobId)), via: 'ws', events }
        }
        // Polling fallback: the durable log after the last seq we have.
        const pollMs = opts.pollMs ?? 1000
        for (;;) {
            for (const e of await this.steady(() => this.events(jobId, lastSeq))) seen(e, 'poll')
            const last = events[events.length - 1]
            if (last && FINISHED.has(last.status)) break
            if (Date.now() > deadline) {
                throw new MurmurError(`Murmur job ${jobId} did not finish in time; it goes on on the server (use the Murmur Job Status node to check it later).`, 'timeout', 0, '')
            }
            await sleep(pollMs)
        }
        return { job: await this.steady(() => this.getJob(jobId)), via: 'poll', events }
    }

    /**
     * Retries a read made while following a job, when the failure is likely
     * transient (the network, a 5xx, rate limiting): a long transcription
     * should not fail for one lost poll.
     */
    private async steady<T>(read: () => Promise<T>): Promise<T> {
        for (let attempt = 0; ; attempt++) {
            try {
                return await read()
            } catch (e) {
                const transient =
                    e instanceof MurmurError && (e.code === 'network' || e.code === 'rate_limited' || e.code === 'unavailable' || e.status >= 500)
                if (!transient || attempt >= 3) throw e
                await sleep(500 * (attempt + 1))
            }
        }
    }

    /**
     * Answers true once a finishing event arrived over the socket, false if
     * the socket failed (the caller then polls). A not-found subscription
     * is an error, not a reason to poll.
     */
    private followOverSocket(
        jobId: string,
        deadline: number,
        after: () => number,
        seen: (e: MurmurEvent, via: 'ws') => void
    ): Promise<boolean> {
        return new Promise<boolean>((resolve, reject) => {
            let settled = false
            let ws: WebSocket
            const finish = (ok: boolean, err?: Error) => {
                if (settled) return
                settled = true
                clearTimeout(timer)
                try {
                    ws.removeAllListeners()
                    ws.on('error', () => undefined)
                    ws.close()
                } catch {
                    /* already closed */
                }
                if (err) reject(err)
                else resolve(ok)
            }
            const timer = setTimeout(() => finish(false), Math.max(0, deadline - Date.now()))
            try {
                ws = new WebSocket(this.wsUrl(), { headers: this.headers(), handshakeTimeout: 10_000 })
            } catch {
                settled = true
                clearTimeout(timer)
                resolve(false)
                return
            }
            ws.on('open', () => {
                ws.send(JSON.stringify({ op: 'subscribe', topic: `job:${jobId}`, after: after() }))
            })
            ws.on('message', (raw) => {
                let msg: any
                try {
                    msg = JSON.parse(raw.toString())
                } catch {
                    return
                }
                if (typeof msg.seq === 'number' && msg.job_id === jobId) {
                    seen(msg as MurmurEvent, 'ws')
                    if (FINISHED.has(msg.status)) finish(true)
                    return
                }
                if (msg.type === 'error') {
                    if (msg.code === 'not_found') {
                        finish(false, new MurmurError(describeProblem(404, msg, { jobId }), 'not_found', 404, msg.detail ?? ''))
                    } else {
                        finish(false)
                    }
                } else if (msg.type === 'lagged') {
                    // Missed events: ask for the log again after what we have.
                    ws.send(JSON.stringify({ op: 'subscribe', topic: `job:${jobId}`, after: after() }))
                }
            })
            ws.on('unexpected-response', () => finish(false))
            ws.on('error', () => finish(false))
            ws.on('close', () => finish(false))
        })
    }
}
