// Murmur's problem answers (`application/problem+json`, docs/API.md) turned into
// messages a Flowise user can act on. The server's own `detail` is kept.

export interface Problem {
    type?: string
    title?: string
    status?: number
    detail?: string
    code?: string
}

/** What the request was about, to name the feature or model in the message. */
export interface ErrorContext {
    action?: string
    model?: string
    diarize?: boolean
    separateBgm?: boolean
    translate?: boolean
    fileName?: string
    jobId?: string
    baseUrl?: string
}

export class MurmurError extends Error {
    readonly code: string
    readonly status: number
    readonly detail: string

    constructor(message: string, code: string, status: number, detail: string) {
        super(message)
        this.name = 'MurmurError'
        this.code = code
        this.status = status
        this.detail = detail
    }
}

function tierOf(detail: string): string | undefined {
    return detail.match(/\bthe ([A-Za-z0-9_-]+) tier\b/i)?.[1]
}

function plan(detail: string): string {
    const tier = tierOf(detail)
    return tier ? `your Murmur plan (${tier})` : 'your Murmur plan'
}

function upgradeHint(detail: string): string {
    const tier = tierOf(detail)?.toLowerCase()
    if (tier === 'basic') return 'Upgrade to premium (or enterprise) to use it'
    if (tier === 'premium') return 'Upgrade to enterprise to use it'
    return 'Upgrade your Murmur plan to use it'
}

function featureOf(detail: string, ctx: ErrorContext): string {
    const d = detail.toLowerCase()
    if (d.includes('diarization')) return 'Speaker diarization'
    if (d.includes('bgm') || d.includes('separation')) return 'Background music (BGM) separation'
    if (d.includes('translat')) return 'Translation'
    if (ctx.diarize) return 'Speaker diarization'
    if (ctx.separateBgm) return 'Background music (BGM) separation'
    if (ctx.translate) return 'Translation'
    return 'This feature'
}

/** A user-facing message for a problem answer. */
export function describeProblem(status: number, problem: Problem, ctx: ErrorContext = {}): string {
    const code = problem.code ?? ''
    const detail = (problem.detail ?? problem.title ?? '').trim()
    const said = detail ? ` (Murmur said: ${detail})` : ''
    switch (code) {
        case 'feature_not_in_tier': {
            const feature = featureOf(detail, ctx)
            if (feature === 'Translation' && /at most \d+ s/.test(detail)) {
                return `Translation of a file this long is not included in ${plan(detail)}. ${upgradeHint(detail)}, or translate a shorter file.${said}`
            }
            return `${feature} is not included in ${plan(detail)}. ${upgradeHint(detail)}, or turn the option off in this node.${said}`
        }
        case 'model_not_in_tier': {
            const allowed = detail.match(/it allows (.*)$/)?.[1]
            const model = ctx.model ? `The model "${ctx.model}"` : 'The chosen model'
            return (
                `${model} is not included in ${plan(detail)}.` +
                (allowed ? ` Your plan allows: ${allowed}.` : '') +
                ` Pick another model or upgrade your plan.${said}`
            )
        }
        case 'beam_size_not_in_tier': {
            const max = detail.match(/at most (\d+) beams/)?.[1]
            return `That beam size is wider than ${plan(detail)} allows${max ? ` (at most ${max})` : ''}. Lower Beam Size or upgrade your plan.${said}`
        }
        case 'payload_too_large':
            return `The audio file${ctx.fileName ? ` "${ctx.fileName}"` : ''} is too large for ${plan(detail)}. Use a shorter or more compressed recording, or upgrade your plan.${said}`
        case 'quota_exceeded':
            return `A limit of ${plan(detail)} is used up, so Murmur refused the request. Delete old files or workflows, wait for next month, or upgrade.${said}`
        case 'unauthorized':
            return `Murmur rejected the API key (unauthorized): check the "Murmur API" credential's API key; it may be wrong, revoked or expired.${said}`
        case 'forbidden':
            return `This Murmur API key may not do that (forbidden): its role or scopes do not allow ${ctx.action ?? 'this operation'}.${said}`
        case 'invalid_audio':
            return `Murmur could not decode the audio file${ctx.fileName ? ` "${ctx.fileName}"` : ''}: is it a real audio recording (wav, mp3, m4a, ogg, flac, webm)?${said}`
        case 'unsupported_media':
            return `Murmur does not accept this kind of upload.${said}`
        case 'not_found':
            if (ctx.jobId) {
                return `Murmur: job "${ctx.jobId}" was not found for this API key's tenant (it does not exist, or belongs to another tenant).${said}`
            }
            return `Murmur: ${detail || 'the requested resource was not found'} (for this API key's tenant: it does not exist, or belongs to another tenant).`
        case 'rate_limited':
            return `Murmur is rate-limiting this API key; try again in a moment.${said}`
        case 'unavailable':
            return `Murmur is temporarily unavailable; try again later.${said}`
        case 'conflict':
            return `Murmur: the request conflicts with the current state${ctx.jobId ? ` of job "${ctx.jobId}"` : ''}.${said}`
        case 'invalid_request':
            return `Murmur refused the request as invalid${ctx.action ? ` (${ctx.action})` : ''}.${said}`
        default:
            return `Murmur answered HTTP ${status}${code ? ` (${code})` : ''}${ctx.action ? ` to ${ctx.action}` : ''}.${said}`
    }
}

/** Why a job ended without a result, for the user. */
export function describeJobEnd(status: string, error: string | null | undefined, jobId: string): string {
    if (status === 'cancelled') return `Murmur job ${jobId} was cancelled before it finished.`
    return `Murmur job ${jobId} failed: ${error || 'no reason given'}`
}
