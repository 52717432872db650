//! Louvain community detection (Blondel et al., 2008) over an undirected weighted graph:
//! move each node to the neighbouring community with the best modularity gain until none
//! moves, fold communities into nodes, repeat. Deterministic: nodes are visited in index
//! order and ties keep the lower community.

use std::collections::BTreeMap;

/// Passes of local moving per level at most (each pass visits every node).
const MAX_PASSES: usize = 32;
/// Levels at most.
const MAX_LEVELS: usize = 16;

/// The community (numbered from 0, in order of first member) of each of `n` nodes, given
/// edges `(a, b, weight)`; `resolution` 1.0 is classic modularity, higher gives smaller
/// communities. Non-finite or negative weights are ignored.
pub fn louvain(n: usize, edges: &[(usize, usize, f64)], resolution: f64) -> Vec<usize> {
    let mut adj: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n];
    for &(a, b, w) in edges {
        if a >= n || b >= n || !w.is_finite() || w <= 0.0 {
            continue;
        }
        if a == b {
            adj[a].push((a, 2.0 * w));
        } else {
            adj[a].push((b, w));
            adj[b].push((a, w));
        }
    }
    let mut membership: Vec<usize> = (0..n).collect();
    for _ in 0..MAX_LEVELS {
        let (comm, moved) = one_level(&adj, resolution);
        if !moved {
            break;
        }
        let (comm, k) = renumber(&comm);
        for m in membership.iter_mut() {
            *m = comm[*m];
        }
        adj = aggregate(&adj, &comm, k);
    }
    renumber(&membership).0
}

fn renumber(comm: &[usize]) -> (Vec<usize>, usize) {
    let mut map = BTreeMap::new();
    let mut out = Vec::with_capacity(comm.len());
    for &c in comm {
        let next = map.len();
        out.push(*map.entry(c).or_insert(next));
    }
    (out, map.len())
}

fn one_level(adj: &[Vec<(usize, f64)>], resolution: f64) -> (Vec<usize>, bool) {
    let n = adj.len();
    let k: Vec<f64> = adj.iter().map(|l| l.iter().map(|(_, w)| w).sum()).collect();
    let m2: f64 = k.iter().sum();
    let mut comm: Vec<usize> = (0..n).collect();
    if m2 <= 0.0 {
        return (comm, false);
    }
    let mut tot = k.clone();
    let mut improved = false;
    let mut weights: BTreeMap<usize, f64> = BTreeMap::new();
    for _ in 0..MAX_PASSES {
        let mut moved = false;
        for i in 0..n {
            let ci = comm[i];
            weights.clear();
            for &(j, w) in &adj[i] {
                if j != i {
                    *weights.entry(comm[j]).or_default() += w;
                }
            }
            tot[ci] -= k[i];
            let gain = |c: usize, w: f64| w - resolution * tot[c] * k[i] / m2;
            let mut best = ci;
            let mut best_gain = gain(ci, weights.get(&ci).copied().unwrap_or(0.0));
            for (&c, &w) in &weights {
                let g = gain(c, w);
                if g > best_gain + 1e-12 {
                    best = c;
                    best_gain = g;
                }
            }
            tot[best] += k[i];
            if best != ci {
                comm[i] = best;
                moved = true;
                improved = true;
            }
        }
        if !moved {
            break;
        }
    }
    (comm, improved)
}

fn aggregate(adj: &[Vec<(usize, f64)>], comm: &[usize], k: usize) -> Vec<Vec<(usize, f64)>> {
    let mut sums: Vec<BTreeMap<usize, f64>> = vec![BTreeMap::new(); k];
    for (i, list) in adj.iter().enumerate() {
        for &(j, w) in list {
            *sums[comm[i]].entry(comm[j]).or_default() += w;
        }
    }
    sums.into_iter().map(|m| m.into_iter().collect()).collect()
}

/// Modularity of a partition (for tests and reports).
pub fn modularity(n: usize, edges: &[(usize, usize, f64)], comm: &[usize]) -> f64 {
    let mut k = vec![0.0; n];
    let mut m = 0.0;
    let mut inside: BTreeMap<usize, f64> = BTreeMap::new();
    for &(a, b, w) in edges {
        if a >= n || b >= n || !w.is_finite() || w <= 0.0 {
            continue;
        }
        k[a] += w;
        k[b] += w;
        m += w;
        if comm.get(a) == comm.get(b) {
            *inside.entry(comm[a]).or_default() += w;
        }
    }
    if m <= 0.0 {
        return 0.0;
    }
    let mut tot: BTreeMap<usize, f64> = BTreeMap::new();
    for (i, ki) in k.iter().enumerate() {
        *tot.entry(comm[i]).or_default() += ki;
    }
    tot.iter()
        .map(|(c, t)| inside.get(c).copied().unwrap_or(0.0) / m - (t / (2.0 * m)).powi(2))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_cliques_joined_by_one_edge_are_two_communities() {
        let mut edges = Vec::new();
        for (lo, hi) in [(0, 5), (5, 10)] {
            for a in lo..hi {
                for b in a + 1..hi {
                    edges.push((a, b, 1.0));
                }
            }
        }
        edges.push((4, 5, 1.0));
        let c = louvain(10, &edges, 1.0);
        assert!(c[..5].iter().all(|&x| x == c[0]));
        assert!(c[5..].iter().all(|&x| x == c[5]));
        assert_ne!(c[0], c[5]);
        assert!(modularity(10, &edges, &c) > 0.4);
    }

    #[test]
    fn empty_and_bad_input_do_not_panic() {
        assert!(louvain(0, &[], 1.0).is_empty());
        assert_eq!(
            louvain(3, &[(0, 9, 1.0), (1, 2, f64::NAN)], 1.0),
            vec![0, 1, 2]
        );
    }
}
