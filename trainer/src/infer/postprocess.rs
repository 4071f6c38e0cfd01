//! Post-processing of predicted masks.

use std::collections::VecDeque;

use ndarray::{Array3, ArrayViewMut3};

/// Keeps only the largest 26-connected component of a binary mask (ties: the component met
/// first in `[i, j, k]` scan order). Returns how many voxels were removed.
pub fn keep_largest_component(mut mask: ArrayViewMut3<u8>) -> usize {
    let (ni, nj, nk) = mask.dim();
    let mut label = Array3::<u32>::zeros((ni, nj, nk));
    let mut sizes: Vec<usize> = vec![0];
    let mut queue = VecDeque::new();
    for start in ndarray::indices((ni, nj, nk)) {
        if mask[start] == 0 || label[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32;
        let mut size = 0;
        label[start] = id;
        queue.push_back(start);
        while let Some((i, j, k)) = queue.pop_front() {
            size += 1;
            for di in -1i64..=1 {
                for dj in -1i64..=1 {
                    for dk in -1i64..=1 {
                        let (a, b, c) = (i as i64 + di, j as i64 + dj, k as i64 + dk);
                        if a < 0
                            || b < 0
                            || c < 0
                            || a >= ni as i64
                            || b >= nj as i64
                            || c >= nk as i64
                        {
                            continue;
                        }
                        let next = (a as usize, b as usize, c as usize);
                        if mask[next] != 0 && label[next] == 0 {
                            label[next] = id;
                            queue.push_back(next);
                        }
                    }
                }
            }
        }
        sizes.push(size);
    }
    let Some(largest) = (1..sizes.len()).max_by_key(|&id| (sizes[id], std::cmp::Reverse(id)))
    else {
        return 0;
    };
    let mut removed = 0;
    ndarray::Zip::from(&mut mask).and(&label).for_each(|m, &l| {
        if *m != 0 && l as usize != largest {
            *m = 0;
            removed += 1;
        }
    });
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_largest_component_and_treats_diagonals_as_connected() {
        let mut mask = Array3::<u8>::zeros((6, 6, 6));
        // A diagonal chain of 3 voxels (26-connected) and a separate pair.
        mask[[0, 0, 0]] = 1;
        mask[[1, 1, 1]] = 1;
        mask[[2, 2, 2]] = 1;
        mask[[5, 5, 0]] = 1;
        mask[[5, 4, 0]] = 1;
        let removed = keep_largest_component(mask.view_mut());
        assert_eq!(removed, 2);
        assert_eq!(mask.iter().filter(|&&m| m == 1).count(), 3);
        assert_eq!(mask[[2, 2, 2]], 1);
    }

    #[test]
    fn empty_mask_is_left_alone() {
        let mut mask = Array3::<u8>::zeros((3, 3, 3));
        assert_eq!(keep_largest_component(mask.view_mut()), 0);
    }
}
