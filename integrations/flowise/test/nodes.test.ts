// The Murmur Flowise nodes against a real Murmur server (tests/js/murmur.mjs
// starts the binary). Nodes are loaded from the compiled dist/ exactly as
// Flowise's NodesPool loads them (`require(file).nodeClass`, `new`, then
// `init(nodeData, input, options)` / `loadMethods[...]`).
//
// Credentials: inside Flowise, `getCredentialData(nodeData.credential,
// options)` reads and decrypts the credential from Flowise's database through
// `options.appDataSource`. There is no Flowise database here, so the tests
// hand the nodes `options.murmurHost.getCredentialData`, which answers the
// same decrypted shape (`{baseUrl, apiKey}`) for a credential id. Everything
// after that lookup is the product path.

import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs'
import { createServer, Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'

const DIST = resolve(__dirname, '..', 'dist')
const HARNESS = resolve(__dirname, '..', '..', '..', 'tests', 'js', 'murmur.mjs')
const PHRASE = /ask not what your country can do for you/i

function nodeClass(name: string): any {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    return require(join(DIST, 'nodes', name, `${name}.js`)).nodeClass
}

function nodeData(instance: any, credential: string, inputs: Record<string, any>): any {
    // The shape Flowise builds from a flow's node: the node's properties, its
    // id, the selected credential's id and the inputs as saved in the flow.
    return {
        ...instance,
        id: `${instance.name}_0`,
        credential,
        inputs
    }
}

let harness: any
let server: any
// A web server on loopback that serves the JFK recording at /talk.wav (and
// a text file at /notes.txt), for the nodes' Audio URL input.
let web: Server
let webBase: string
let audioUri: string
let audioBytes: Buffer
const credentials: Record<string, { baseUrl: string; apiKey: string }> = {}

function options(extra: Record<string, any> = {}): Record<string, any> {
    return {
        orgId: 'org-test',
        chatflowid: 'flow-test',
        chatId: 'chat-test',
        murmurHost: {
            async getCredentialData(id: string) {
                const c = credentials[id]
                if (!c) throw new Error(`Credential ${id} not found`)
                return { ...c }
            }
        },
        ...extra
    }
}

/**
 * fetch for the tests' own calls with valid keys. Under heavy CPU load the
 * server has answered a valid key with a spurious 401 (see README, "Known
 * issues"); ask again, as the nodes do, so that bug does not fail unrelated
 * tests. Calls meant to be refused do not go through here.
 */
async function murmurFetch(url: string, init: RequestInit): Promise<Response> {
    for (let attempt = 0; ; attempt++) {
        const res = await fetch(url, init)
        if (res.status !== 401 || attempt >= 2) return res
        await res.arrayBuffer()
        await new Promise((r) => setTimeout(r, 250 * (attempt + 1)))
    }
}

async function api(token: string, method: string, path: string, body?: unknown): Promise<any> {
    const res = await murmurFetch(`${server.base}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined
    })
    const text = await res.text()
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`)
    return text ? JSON.parse(text) : null
}

async function apiKey(token: string, name: string): Promise<string> {
    const key = await api(token, 'POST', '/v1/api-keys', { name })
    assert.ok(key.token, 'api key token')
    return key.token
}

/** Uploads the JFK recording and runs a job on it through the API, as another client would. */
async function jobThroughApi(token: string): Promise<string> {
    const form = new FormData()
    form.append('file', new Blob([audioBytes], { type: 'audio/wav' }), 'jfk.wav')
    const res = await murmurFetch(`${server.base}/v1/files`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: form })
    assert.equal(res.status, 201, await res.clone().text())
    const file: any = await res.json()
    const job = await api(token, 'POST', '/v1/jobs', { file_id: file.id, params: { model: 'tiny.en' } })
    return job.id
}

before(async () => {
    harness = await import(pathToFileURL(HARNESS).href)
    harness.installModels(['tiny.en', 'silero-vad'])
    const path = harness.testAudio('jfk')
    audioBytes = readFileSync(path)
    // Exactly what Flowise's UI stores for a `file` input.
    audioUri = `data:audio/wav;base64,${audioBytes.toString('base64')},filename:jfk.wav`
    web = createServer((req, res) => {
        if (req.url === '/talk.wav') {
            res.writeHead(200, { 'content-type': 'audio/wav' })
            res.end(audioBytes)
        } else if (req.url === '/notes.txt') {
            res.writeHead(200, { 'content-type': 'text/plain' })
            res.end('not audio\n'.repeat(100))
        } else {
            res.writeHead(404)
            res.end()
        }
    })
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', r))
    webBase = `http://127.0.0.1:${(web.address() as any).port}`
    // The SSRF guard refuses loopback unless the operator allows the host.
    server = await harness.startMurmur({ env: { MURMUR__OUTBOUND__ALLOWED_HOSTS: '127.0.0.1' } })
    const a = await harness.signup(server.base, 'flowise-a')
    const b = await harness.signup(server.base, 'flowise-b')
    credentials.credA = { baseUrl: server.base, apiKey: await apiKey(a.token, 'flowise') }
    credentials.credB = { baseUrl: server.base, apiKey: await apiKey(b.token, 'flowise') }
    credentials.credBad = { baseUrl: server.base, apiKey: 'not-a-murmur-key' }
    credentials.credA_token = { baseUrl: server.base, apiKey: a.token }
})

after(async () => {
    await server?.stop()
    web?.close()
})

describe('credential', () => {
    test('murmurApi has a base URL and a password API key', () => {
        // eslint-disable-next-line @typescript-eslint/no-var-requires
        const { credClass } = require(join(DIST, 'credentials', 'MurmurApi.credential.js'))
        const cred = new credClass()
        assert.equal(cred.name, 'murmurApi')
        assert.equal(cred.label, 'Murmur API')
        assert.deepEqual(
            cred.inputs.map((i: any) => [i.name, i.type]),
            [
                ['baseUrl', 'string'],
                ['apiKey', 'password']
            ]
        )
    })
})

describe('Murmur Transcribe', () => {
    test('model list comes from GET /v1/models: the installed models', async () => {
        const Node = nodeClass('MurmurTranscribe')
        const node = new Node()
        const list = await node.loadMethods.listModels(nodeData(node, 'credA', {}), options())
        const names = list.map((o: any) => o.name)
        const served: any = await api(credentials.credA.apiKey, 'GET', '/v1/models')
        const installed = served.items.filter((m: any) => m.installed).map((m: any) => m.id)
        assert.ok(names.includes('tiny.en'), `tiny.en listed: ${names}`)
        assert.deepEqual(names.sort(), installed.sort())
        const tiny = list.find((o: any) => o.name === 'tiny.en')
        assert.equal(tiny.label, 'tiny.en', 'tiny.en is allowed on basic (family tiny)')
        assert.match(tiny.description, /English only/)
    })

    test('transcribes the JFK recording given as a base64 data URI', async () => {
        const Node = nodeClass('MurmurTranscribe')
        const node = new Node()
        const out = await node.init(nodeData(node, 'credA', { audioFile: audioUri, model: 'tiny.en', task: 'transcribe', vad: true, outputFormat: 'text' }), '', options())
        assert.equal(typeof out, 'string')
        assert.match(out, PHRASE)
    })

    test('transcribes an Audio URL the server fetches, after the files, and refuses bad ones in words', async () => {
        const Node = nodeClass('MurmurTranscribe')
        const node = new Node()
        const urlOnly = await node.init(nodeData(node, 'credA', { audioUrl: `${webBase}/talk.wav`, model: 'tiny.en' }), '', options())
        assert.match(urlOnly, PHRASE)
        const filesA = await api(credentials.credA.apiKey, 'GET', '/v1/files')
        const fetched = filesA.items.find((f: any) => f.name === 'talk.wav')
        assert.ok(fetched, 'the fetched file is the tenant\'s, named after the URL')
        // Another tenant does not see it.
        const filesB = await api(credentials.credB.apiKey, 'GET', '/v1/files')
        assert.equal(filesB.items.find((f: any) => f.id === fetched.id), undefined)

        // A file and a URL: two transcripts, the file's first.
        const both = await node.init(nodeData(node, 'credA', { audioFile: audioUri, audioUrl: `${webBase}/talk.wav`, model: 'tiny.en' }), '', options())
        const parts = both.split('\n\n')
        assert.equal(parts.length, 2, both)
        for (const part of parts) assert.match(part, PHRASE)

        await assert.rejects(node.init(nodeData(node, 'credA', { model: 'tiny.en' }), '', options()), /no audio was given/)
        await assert.rejects(node.init(nodeData(node, 'credA', { audioUrl: 'ftp://example.com/a.wav' }), '', options()), /must be http or https/)
        await assert.rejects(node.init(nodeData(node, 'credA', { audioUrl: 'talk.wav' }), '', options()), /is not a URL/)
        // The cloud metadata address: the server's SSRF guard refuses it.
        await assert.rejects(node.init(nodeData(node, 'credA', { audioUrl: 'http://169.254.169.254/latest/' }), '', options()), (e: any) => {
            assert.match(e.message, /not allowed|link-local|private/i)
            return true
        })
        // Not audio: refused by the server's audio check.
        await assert.rejects(node.init(nodeData(node, 'credA', { audioUrl: `${webBase}/notes.txt` }), '', options()), (e: any) => {
            assert.match(e.message, /audio|media|not supported/i)
            return true
        })
    })

    test('Word Timestamps gives every segment its timed words in the JSON output', async () => {
        const Node = nodeClass('MurmurTranscribe')
        const node = new Node()
        const out = JSON.parse(
            await node.init(nodeData(node, 'credA', { audioFile: audioUri, model: 'tiny.en', wordTimestamps: true, outputFormat: 'json' }), '', options())
        )
        const words = out.segments.flatMap((s: any) => s.words)
        assert.ok(words.length >= 20, `${words.length} words`)
        for (const w of words) assert.ok(w.start <= w.end && typeof w.probability === 'number', JSON.stringify(w))
        const country = words.filter((w: any) => /country/i.test(w.word)).at(-1)
        assert.ok(country.end > 9.5 && country.end <= 11.05, JSON.stringify(country))
        // Off by default: no words.
        const plain = JSON.parse(await node.init(nodeData(node, 'credA', { audioFile: audioUri, model: 'tiny.en', outputFormat: 'json' }), '', options()))
        assert.ok(plain.segments.every((s: any) => !s.words), 'no words unless asked')
    })

    test('Beam Size searches that many beams, within the plan, and says so when it is not', async () => {
        const Node = nodeClass('MurmurTranscribe')
        const node = new Node()
        assert.ok(node.inputs.some((i: any) => i.name === 'beamSize' && i.additionalParams))
        const text = await node.init(nodeData(node, 'credA', { audioFile: audioUri, model: 'tiny.en', beamSize: '3' }), '', options())
        assert.match(text, PHRASE)
        const [latest] = (await api(credentials.credA.apiKey, 'GET', '/v1/jobs?limit=1')).items
        assert.equal(latest.params.beam_size, 3)
        // Basic allows 5 beams in the test tiers: the server's 403, in words.
        await assert.rejects(node.init(nodeData(node, 'credA', { audioFile: audioUri, model: 'tiny.en', beamSize: 6 }), '', options()), (e: any) => {
            assert.match(e.message, /wider than your Murmur plan \(basic\) allows \(at most 5\)\. Lower Beam Size/)
            return true
        })
        // Not a whole number: refused before any upload, naming the input.
        await assert.rejects(node.init(nodeData(node, 'credA', { audioFile: audioUri, beamSize: '2.5' }), '', options()), /Beam Size must be a whole number/)
    })

    test('as a chatflow ending node it transcribes once, in run', async () => {
        const Node = nodeClass('MurmurTranscribe')
        const node = new Node()
        assert.deepEqual(
            node.outputs.map((o: any) => o.name),
            ['output', 'EndingNode']
        )
        const data = { ...nodeData(node, 'credA', { audioFile: audioUri, model: 'tiny.en' }), outputs: { output: 'EndingNode' } }
        const before = (await api(credentials.credA.apiKey, 'GET', '/v1/jobs')).items.length
        // Flowise's buildFlow first calls init on every node, the ending node included...
        assert.equal(await node.init(data, 'hello', options()), undefined)
        assert.equal((await api(credentials.credA.apiKey, 'GET', '/v1/jobs')).items.length, before, 'init started no job')
        // ...then run on the ending node, whose string answer becomes the reply's text.
        assert.match(await new Node().run(data, 'hello', options()), PHRASE)
        assert.equal((await api(credentials.credA.apiKey, 'GET', '/v1/jobs')).items.length, before + 1)
    })

    test('SRT output parses into timed cues', async () => {
        const Node = nodeClass('MurmurTranscribe')
        const node = new Node()
        const srt: string = await node.init(
            nodeData(node, 'credA', { audioFile: audioUri, model: 'tiny.en', vad: 'false', outputFormat: 'srt' }),
            '',
            options()
        )
        const blocks = srt.trim().split(/\r?\n\r?\n/)
        assert.ok(blocks.length >= 1, srt)
        let last = -1
        const toS = (t: string) => {
            const [h, m, rest] = t.split(':')
            const [s, ms] = rest.split(',')
            return Number(h) * 3600 + Number(m) * 60 + Number(s) + Number(ms) / 1000
        }
        blocks.forEach((block, i) => {
            const lines = block.split(/\r?\n/)
            assert.equal(lines[0].trim(), String(i + 1), `cue number in ${block}`)
            const m = lines[1].match(/^(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)$/)
            assert.ok(m, `timing line in ${block}`)
            const [start, end] = [toS(m![1]), toS(m![2])]
            assert.ok(start >= last && end >= start, `times increase in ${block}`)
            last = start
            assert.ok(lines.slice(2).join(' ').trim().length > 0, 'cue text')
        })
        assert.match(blocks.map((b) => b.split(/\r?\n/).slice(2).join(' ')).join(' '), /country/i)
    })

    test('subtitle layout inputs give one cue per word, timed without asking', async () => {
        const Node = nodeClass('MurmurTranscribe')
        const node = new Node()
        assert.ok(node.inputs.some((i: any) => i.name === 'maxWordsPerLine' && i.additionalParams))
        // Word Timestamps is off: the layout turns it on by itself.
        const srt: string = await node.init(
            nodeData(node, 'credA', { audioFile: audioUri, model: 'tiny.en', outputFormat: 'srt', maxWordsPerLine: 1 }),
            '',
            options()
        )
        const cues = srt.trim().split(/\r?\n\r?\n/).map((b) => b.split(/\r?\n/).slice(2).join(' '))
        assert.ok(cues.length >= 20, `${cues.length} cues`)
        assert.ok(cues.every((c) => c.trim().split(/\s+/).length === 1), srt)
        assert.ok(cues.some((c) => /country/i.test(c)), srt)
        const vtt: string = await node.init(
            nodeData(node, 'credA', { audioFile: audioUri, model: 'tiny.en', outputFormat: 'vtt', maxLineWidth: '14', highlightWords: true }),
            '',
            options()
        )
        assert.equal((vtt.match(/<u>/g) || []).length, cues.length, 'each word underlined once')
        for (const line of vtt.split(/\r?\n/).filter((l) => l && l !== 'WEBVTT' && !l.includes(' --> '))) {
            assert.ok(line.replace(/<\/?u>/g, '').length <= 14 || !line.includes(' '), line)
        }
        await assert.rejects(
            node.init(nodeData(node, 'credA', { audioFile: audioUri, model: 'tiny.en', outputFormat: 'srt', maxLineCount: 0 }), '', options()),
            /Max Lines per Cue must be a whole number from 1 to 1000/
        )
    })

    test('JSON output carries language and segments', async () => {
        const Node = nodeClass('MurmurTranscribe')
        const node = new Node()
        const out = JSON.parse(await node.init(nodeData(node, 'credA', { audioFile: audioUri, model: 'tiny.en', outputFormat: 'json' }), '', options()))
        assert.equal(out.language, 'en')
        assert.ok(Array.isArray(out.segments) && out.segments.length > 0)
        assert.match(out.text, PHRASE)
    })

    test('a FILE-STORAGE reference is read through the host storage helper with orgId and chatflowid', async () => {
        const Node = nodeClass('MurmurTranscribe')
        const node = new Node()
        const calls: any[] = []
        const out = await node.init(
            nodeData(node, 'credA', { audioFile: 'FILE-STORAGE::["jfk.wav"]', model: 'tiny.en' }),
            '',
            options({
                murmurHost: {
                    getCredentialData: async (id: string) => credentials[id],
                    getFileFromStorage: async (...args: string[]) => {
                        calls.push(args)
                        return audioBytes
                    }
                }
            })
        )
        assert.deepEqual(calls, [['jfk.wav', 'org-test', 'flow-test']])
        assert.match(out, PHRASE)
    })

    test('a basic-tier tenant asking for diarization gets an understandable message', async () => {
        const Node = nodeClass('MurmurTranscribe')
        const node = new Node()
        await assert.rejects(
            node.init(nodeData(node, 'credA', { audioFile: audioUri, model: 'tiny.en', diarize: true }), '', options()),
            (e: any) => {
                assert.match(e.message, /^Speaker diarization is not included in your Murmur plan \(basic\)\. Upgrade to premium/)
                // The server's own detail is kept.
                assert.match(e.message, /Murmur said: speaker diarization is not part of the basic tier/)
                assert.equal(e.code, 'feature_not_in_tier')
                return true
            }
        )
    })

    test('a model outside the plan names the model and what the plan allows', async () => {
        const Node = nodeClass('MurmurTranscribe')
        const node = new Node()
        await assert.rejects(node.init(nodeData(node, 'credA', { audioFile: audioUri, model: 'medium' }), '', options()), (e: any) => {
            assert.match(e.message, /The model "medium" is not included in your Murmur plan \(basic\)\. Your plan allows: tiny, base\./)
            assert.equal(e.code, 'model_not_in_tier')
            return true
        })
    })

    test('a bad API key gives an understandable message, for runs and for the model list', async () => {
        const Node = nodeClass('MurmurTranscribe')
        const node = new Node()
        const unauthorized = (e: any) => {
            assert.match(e.message, /Murmur rejected the API key \(unauthorized\): check the "Murmur API" credential's API key/)
            assert.equal(e.code, 'unauthorized')
            return true
        }
        await assert.rejects(node.init(nodeData(node, 'credBad', { audioFile: audioUri, model: 'tiny.en' }), '', options()), unauthorized)
        // A larger body makes the server's early 401 cut the upload short (EPIPE): same message.
        const large = `data:audio/wav;base64,${Buffer.concat([audioBytes, Buffer.alloc(1_500_000)]).toString('base64')},filename:large.wav`
        await assert.rejects(node.init(nodeData(node, 'credBad', { audioFile: large, model: 'tiny.en' }), '', options()), unauthorized)
        await assert.rejects(node.loadMethods.listModels(nodeData(node, 'credBad', {}), options()), unauthorized)
    })

    test('audio that does not decode and audio over the plan size are explained', async () => {
        const Node = nodeClass('MurmurTranscribe')
        const node = new Node()
        const junk = `data:audio/wav;base64,${Buffer.from('this is not audio at all, just text '.repeat(50)).toString('base64')},filename:junk.wav`
        await assert.rejects(node.init(nodeData(node, 'credA', { audioFile: junk, model: 'tiny.en' }), '', options()), (e: any) => {
            assert.match(e.message, /Murmur could not decode the audio file "junk.wav"/)
            assert.equal(e.code, 'invalid_audio')
            return true
        })
        // The test tier table allows 2,000,000 bytes on basic.
        const big = `data:audio/wav;base64,${Buffer.alloc(2_100_000, 7).toString('base64')},filename:big.wav`
        await assert.rejects(node.init(nodeData(node, 'credA', { audioFile: big, model: 'tiny.en' }), '', options()), (e: any) => {
            assert.match(e.message, /The audio file "big.wav" is too large for your Murmur plan \(basic\)/)
            assert.equal(e.code, 'payload_too_large')
            return true
        })
    })

    test('no credential or no host helper fails clearly', async () => {
        const Node = nodeClass('MurmurTranscribe')
        const node = new Node()
        await assert.rejects(node.init(nodeData(node, '', { audioFile: audioUri }), '', options()), /no "Murmur API" credential is selected/)
        // Outside Flowise (no flowise-components here) and without an adapter.
        await assert.rejects(node.init(nodeData(node, 'credA', { audioFile: audioUri }), '', { orgId: 'o' }), /not running inside Flowise/)
    })
})

describe('job following', () => {
    test('follows over the WebSocket, and polls when the socket cannot be opened', async () => {
        // eslint-disable-next-line @typescript-eslint/no-var-requires
        const { MurmurClient } = require(join(DIST, 'lib', 'client.js'))
        const client = new MurmurClient(credentials.credA)
        const viaWs = await client.followJob(await jobThroughApi(credentials.credA.apiKey), { timeoutMs: 60_000 })
        assert.equal(viaWs.via, 'ws')
        assert.equal(viaWs.job.status, 'completed')
        assert.deepEqual(
            viaWs.events.map((e: any) => e.seq),
            viaWs.events.map((_: any, i: number) => i + 1),
            'every event once, in order, from seq 1'
        )
        assert.equal(viaWs.events[viaWs.events.length - 1].type, 'completed')

        // A socket that cannot connect (nothing listens on that port): polling takes over.
        const broken = new MurmurClient(credentials.credA)
        broken.wsUrl = () => 'ws://127.0.0.1:1/v1/ws'
        const viaPoll = await broken.followJob(await jobThroughApi(credentials.credA.apiKey), { timeoutMs: 60_000, pollMs: 200 })
        assert.equal(viaPoll.via, 'poll')
        assert.equal(viaPoll.job.status, 'completed')
        assert.equal(viaPoll.events[viaPoll.events.length - 1].type, 'completed')
    })

    test("subscribing to another tenant's job is refused as not found", async () => {
        // eslint-disable-next-line @typescript-eslint/no-var-requires
        const { MurmurClient } = require(join(DIST, 'lib', 'client.js'))
        const jobA = await jobThroughApi(credentials.credA.apiKey)
        await assert.rejects(new MurmurClient(credentials.credB).followJob(jobA, { timeoutMs: 20_000 }), /was not found for this API key's tenant/)
    })
})

describe('Murmur Run Workflow', () => {
    test('lists the workflows and runs one created through the API', async () => {
        const wf = await api(credentials.credA.apiKey, 'POST', '/v1/workflows', {
            name: 'English, tiny',
            params: { model: 'tiny.en', task: 'transcribe', language: 'en' }
        })
        const Node = nodeClass('MurmurRunWorkflow')
        const node = new Node()
        const list = await node.loadMethods.listWorkflows(nodeData(node, 'credA', {}), options())
        const entry = list.find((o: any) => o.name === wf.id)
        assert.ok(entry, JSON.stringify(list))
        assert.equal(entry.label, 'English, tiny')
        assert.match(entry.description, /tiny\.en/)
        // Tenant B does not see A's workflow.
        const listB = await node.loadMethods.listWorkflows(nodeData(node, 'credB', {}), options())
        assert.equal(listB.find((o: any) => o.name === wf.id), undefined)

        const out = await node.init(nodeData(node, 'credA', { workflow: wf.id, audioFile: audioUri, outputFormat: 'text' }), '', options())
        assert.match(out, PHRASE)
        // The job ran with the workflow's parameters.
        const jobs = await api(credentials.credA.apiKey, 'GET', '/v1/jobs')
        const job = jobs.items.find((j: any) => j.workflow_id === wf.id)
        assert.ok(job, 'a job of that workflow')
        assert.equal(job.params.model, 'tiny.en')
        assert.equal(job.params.language, 'en')

        // The same workflow on an Audio URL.
        const fromUrl = await node.init(nodeData(node, 'credA', { workflow: wf.id, audioUrl: `${webBase}/talk.wav` }), '', options())
        assert.match(fromUrl, PHRASE)
    })
})

describe('Murmur Job Status', () => {
    test("reports status, progress and result; another tenant's key gets not found", async () => {
        const jobId = await jobThroughApi(credentials.credA.apiKey)
        const Node = nodeClass('MurmurJobStatus')
        const node = new Node()
        let report: any
        const until = Date.now() + 60_000
        do {
            report = JSON.parse(await node.init(nodeData(node, 'credA', { jobId, includeResult: true, outputFormat: 'text' }), '', options()))
            assert.equal(report.id, jobId)
            assert.ok(['queued', 'running', 'completed'].includes(report.status), report.status)
            assert.ok(report.progress >= 0 && report.progress <= 1)
            if (report.status !== 'completed') await new Promise((r) => setTimeout(r, 300))
        } while (report.status !== 'completed' && Date.now() < until)
        assert.equal(report.status, 'completed')
        assert.equal(report.progress, 1)
        assert.match(report.result, PHRASE)

        await assert.rejects(node.init(nodeData(node, 'credB', { jobId }), '', options()), (e: any) => {
            assert.equal(e.code, 'not_found')
            assert.match(e.message, new RegExp(`job "${jobId}" was not found for this API key's tenant`))
            return true
        })
    })
})

describe('Murmur Transcribe Tool', () => {
    test('is a structured tool that transcribes a file id and reports a job id', async () => {
        const Node = nodeClass('MurmurTranscribeTool')
        const node = new Node()
        assert.equal(node.category, 'Tools')
        assert.ok(node.baseClasses.includes('Tool') && node.baseClasses.includes('StructuredTool'))
        const tool = await node.init(nodeData(node, 'credA', { model: 'tiny.en', outputFormat: 'text' }), '', options())
        // eslint-disable-next-line @typescript-eslint/no-var-requires
        const { StructuredTool } = require('@langchain/core/tools')
        assert.ok(tool instanceof StructuredTool)
        assert.equal(tool.name, 'murmur_transcribe')

        // An agent's call carries a file id it was told about.
        const form = new FormData()
        form.append('file', new Blob([audioBytes], { type: 'audio/wav' }), 'jfk.wav')
        const res = await murmurFetch(`${server.base}/v1/files`, { method: 'POST', headers: { authorization: `Bearer ${credentials.credA.apiKey}` }, body: form })
        assert.equal(res.status, 201)
        const file: any = await res.json()
        const text = await tool.invoke({ file_id: file.id })
        assert.match(text, PHRASE)

        const jobs = await api(credentials.credA.apiKey, 'GET', '/v1/jobs')
        const job = jobs.items.find((j: any) => j.file_id === file.id)
        const status = JSON.parse(await tool.invoke({ job_id: job.id }))
        assert.equal(status.status, 'completed')
        assert.match(status.result, PHRASE)

        // A URL the agent was given: the server fetches and transcribes it.
        assert.match(await tool.invoke({ audio_url: `${webBase}/talk.wav` }), PHRASE)
        assert.match(await tool.invoke({ audio_url: 'http://169.254.169.254/' }), /^Error: .*(not allowed|link-local|private)/i)
        assert.match(await tool.invoke({ audio_url: 'file:///etc/passwd' }), /^Error: .*must be http or https/)

        // Wrong calls answer text the agent can act on.
        assert.match(await tool.invoke({}), /give exactly one of file_id/)
        assert.match(await tool.invoke({ file_id: file.id, audio_url: `${webBase}/talk.wav` }), /give exactly one of file_id/)
        assert.match(await tool.invoke({ file_id: 'f_missing' }), /^Error: Murmur: file not found \(for this API key's tenant/)
        await assert.rejects(tool.invoke({ file_id: 42 }), /schema|Expected string/i)

        // Tenant B's tool cannot read A's job.
        const toolB = await node.init(nodeData(node, 'credB', {}), '', options())
        assert.match(await toolB.invoke({ job_id: job.id }), new RegExp(`job "${job.id}" was not found for this API key's tenant`))
    })
})

describe('input decoding', () => {
    test('data URIs with and without filename, and lists of them', async () => {
        // eslint-disable-next-line @typescript-eslint/no-var-requires
        const { readAudioInput } = require(join(DIST, 'lib', 'audio.js'))
        const one = await readAudioInput('data:audio/mpeg;base64,AAEC,filename:a b.mp3', {})
        assert.deepEqual(one.map((f: any) => [f.name, f.mime, [...f.data]]), [['a b.mp3', 'audio/mpeg', [0, 1, 2]]])
        const noName = await readAudioInput('data:audio/wav;base64,AAEC', {})
        assert.equal(noName[0].name, 'audio')
        const two = await readAudioInput(JSON.stringify(['data:audio/wav;base64,AA==,filename:x.wav', 'data:audio/ogg;base64,AQ==,filename:y.ogg']), {})
        assert.deepEqual(two.map((f: any) => f.name), ['x.wav', 'y.ogg'])
        await assert.rejects(readAudioInput('', {}), /no audio file was given/)
        await assert.rejects(readAudioInput('https://example.test/a.wav', {}), /not a base64 data URI/)
        await assert.rejects(readAudioInput('FILE-STORAGE::a.wav', {}), /only Flowise can read/)
        const dir = mkdtempSync(join(tmpdir(), 'murmur-flowise-'))
        try {
            writeFileSync(join(dir, 'a.wav'), Buffer.from([9, 9]))
            const stored = await readAudioInput('FILE-STORAGE::a.wav', {
                murmurHost: { getFileFromStorage: async (name: string) => readFileSync(join(dir, name)) }
            })
            assert.deepEqual([...stored[0].data], [9, 9])
        } finally {
            rmSync(dir, { recursive: true, force: true })
        }
    })
})
