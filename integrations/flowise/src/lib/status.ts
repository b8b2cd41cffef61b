// The job status report shared by the Job Status node and the tool.

import { MurmurClient } from './client'
import { formatResult, OutputFormat } from './run'

export interface JobReport {
    id: string
    status: string
    stage: string | null
    progress: number
    error: string | null
    created_at: string
    finished_at: string | null
    result?: string
}

export async function jobReport(client: MurmurClient, jobId: string, format: OutputFormat | 'none'): Promise<JobReport> {
    const id = jobId.trim()
    if (!id) throw new Error('Murmur: no job id was given.')
    const job = await client.getJob(id)
    const report: JobReport = {
        id: job.id,
        status: job.status,
        stage: job.stage,
        progress: job.progress,
        error: job.error,
        created_at: job.created_at,
        finished_at: job.finished_at
    }
    if (job.status === 'completed' && format !== 'none') report.result = await formatResult(client, job, format)
    return report
}
