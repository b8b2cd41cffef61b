//! Agglomerative clustering of speaker embeddings (cosine distance, average
//! linkage).
//!
//! The dendrogram is built once with the nearest-neighbour-chain algorithm
//! (O(n^2) time and memory; exact for average linkage, which never inverts),
//! so any number of clusters, or a distance threshold, is a cheap cut of it:
//! that is how `min_speakers`/`max_speakers` override the threshold.

/// One merge of the dendrogram: two clusters, each named by one of its
/// members, joined at `distance`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Merge {
    pub a: usize,
    pub b: usize,
    pub distance: f32,
}

/// L2-normalised copy of `v` (a zero vector stays zero).
pub fn normalised(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter().map(|x| x / norm).collect()
    } else {
        v.to_vec()
    }
}

pub fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
    1.0 - a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()
}

/// The average-linkage dendrogram of L2-normalised `points`, merges sorted
/// by distance (n - 1 of them).
pub fn dendrogram(points: &[Vec<f32>]) -> Vec<Merge> {
    let n = points.len();
    if n < 2 {
        return Vec::new();
    }
    // Condensed distances between live clusters, indexed by the slot of
    // each cluster (a merged cluster takes over the lower slot).
    let mut dist = vec![0f32; n * n];
    for i in 0..n {
        for j in (i + 1)..n {
            let d = cosine_distance(&points[i], &points[j]);
            dist[i * n + j] = d;
            dist[j * n + i] = d;
        }
    }
    let mut size = vec![1usize; n];
    let mut alive = vec![true; n];
    let mut merges = Vec::with_capacity(n - 1);
    let mut chain: Vec<usize> = Vec::new();
    while merges.len() < n - 1 {
        if chain.is_empty() {
            chain.push((0..n).find(|&i| alive[i]).unwrap_or(0));
        }
        loop {
            let a = chain[chain.len() - 1];
            let prev = (chain.len() >= 2).then(|| chain[chain.len() - 2]);
            // Nearest live neighbour of `a`, preferring the previous chain
            // element on ties so the chain terminates.
            let mut best = prev;
            let mut best_d = prev.map_or(f32::INFINITY, |p| dist[a * n + p]);
            for j in 0..n {
                if j != a && alive[j] && dist[a * n + j] < best_d {
                    best = Some(j);
                    best_d = dist[a * n + j];
                }
            }
            let Some(b) = best else { break };
            if Some(b) == prev {
                chain.pop();
                chain.pop();
                merges.push(Merge {
                    a,
                    b,
                    distance: best_d,
                });
                // Lance-Williams update for average linkage into slot `lo`.
                let (lo, hi) = (a.min(b), a.max(b));
                let (sa, sb) = (size[lo] as f32, size[hi] as f32);
                for k in 0..n {
                    if alive[k] && k != lo && k != hi {
                        let d = (sa * dist[lo * n + k] + sb * dist[hi * n + k]) / (sa + sb);
                        dist[lo * n + k] = d;
                        dist[k * n + lo] = d;
                    }
                }
                size[lo] += size[hi];
                alive[hi] = false;
                break;
            }
            chain.push(b);
        }
    }
    merges.sort_by(|x, y| x.distance.total_cmp(&y.distance));
    merges
}

/// Cluster labels `0..k` (numbered by first member) after applying the
/// first `n - clusters` merges of `merges`.
pub fn cut(n: usize, merges: &[Merge], clusters: usize) -> Vec<usize> {
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let steps = n.saturating_sub(clusters.max(1)).min(merges.len());
    for m in &merges[..steps] {
        let (ra, rb) = (find(&mut parent, m.a), find(&mut parent, m.b));
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    }
    let mut labels = vec![usize::MAX; n];
    let mut next = 0;
    let mut root_label = std::collections::HashMap::new();
    for (i, label) in labels.iter_mut().enumerate() {
        let r = find(&mut parent, i);
        *label = *root_label.entry(r).or_insert_with(|| {
            next += 1;
            next - 1
        });
    }
    labels
}

/// How many clusters a distance `threshold` leaves: merges at or below it
/// are applied.
pub fn clusters_at(n: usize, merges: &[Merge], threshold: f32) -> usize {
    n - merges.iter().filter(|m| m.distance <= threshold).count()
}

/// Mean of the (normalised) members of each cluster, normalised.
pub fn centroids(points: &[Vec<f32>], labels: &[usize], k: usize) -> Vec<Vec<f32>> {
    let dim = points.first().map_or(0, Vec::len);
    let mut sums = vec![vec![0f32; dim]; k];
    for (p, &l) in points.iter().zip(labels) {
        for (s, x) in sums[l].iter_mut().zip(p) {
            *s += x;
        }
    }
    sums.iter().map(|s| normalised(s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(angle_deg: f32) -> Vec<f32> {
        let a = angle_deg.to_radians();
        vec![a.cos(), a.sin()]
    }

    #[test]
    fn separated_groups_are_found_and_cut_at_any_count() {
        // Two tight groups 90 degrees apart, plus a third far from both.
        let pts = vec![
            unit(0.0),
            unit(5.0),
            unit(90.0),
            unit(2.0),
            unit(95.0),
            unit(200.0),
        ];
        let merges = dendrogram(&pts);
        assert_eq!(merges.len(), 5);
        assert!(merges.windows(2).all(|w| w[0].distance <= w[1].distance));
        assert_eq!(clusters_at(6, &merges, 0.1), 3);
        assert_eq!(cut(6, &merges, 3), vec![0, 0, 1, 0, 1, 2]);
        let two = cut(6, &merges, 2);
        assert_eq!(two[0], two[1]);
        assert_eq!(two[2], two[4]);
        assert_ne!(two[0], two[5]);
        assert_eq!(cut(6, &merges, 1), vec![0; 6]);
        assert_eq!(cut(6, &merges, 6), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn average_linkage_distance_is_the_mean_pairwise_distance() {
        let pts = vec![unit(0.0), unit(10.0), unit(120.0)];
        let merges = dendrogram(&pts);
        let d = |a: f32, b: f32| cosine_distance(&unit(a), &unit(b));
        assert!((merges[0].distance - d(0.0, 10.0)).abs() < 1e-6);
        let expected = (d(0.0, 120.0) + d(10.0, 120.0)) / 2.0;
        assert!((merges[1].distance - expected).abs() < 1e-5);
    }

    #[test]
    fn centroids_are_normalised_means() {
        let pts = vec![unit(0.0), unit(90.0)];
        let c = centroids(&pts, &[0, 0], 1);
        assert!((c[0][0] - c[0][1]).abs() < 1e-6);
        assert!((c[0][0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }
}
