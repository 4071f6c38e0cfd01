//! Patch sampling for training: one patch per subject per draw, centred on a voxel of a class
//! drawn with configurable weights, shifted inward at the borders, optionally mirrored.
//!
//! Every draw is a pure function of (seed, epoch, subject order): a resumed run draws exactly
//! the patches the uninterrupted run would have drawn.

use ndarray::{Array3, Array4, Axis, s};
use rand::{RngExt, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;

use crate::data::{normalize::pad_to, subject::Subject};

/// A training subject prepared for sampling: padded to at least the patch size, with the
/// voxels of each class listed.
#[derive(Debug, Clone)]
pub struct SamplingSubject {
    /// Subject identifier.
    pub id: String,
    /// Normalised image, `[channel, i, j, k]`, padded.
    pub image: Array4<f32>,
    /// Class map (0 background, `s + 1` structure `s`), `[i, j, k]`, padded with background.
    pub classes: Array3<u8>,
    /// Flat indices (row-major over `[i, j, k]`) of the voxels of each class.
    voxels_by_class: Vec<Vec<u32>>,
}

impl SamplingSubject {
    /// Prepares a subject with ground truth; `class_count` is background plus structures.
    pub fn new(subject: &Subject, patch: [usize; 3], class_count: usize) -> Self {
        let classes = subject
            .class_map()
            .expect("training subjects are loaded with their masks");
        let classes = pad_to(classes, patch, 0);
        let channels: Vec<Array3<f32>> = subject
            .image
            .outer_iter()
            .map(|channel| {
                // Padding takes the channel's minimum: the darkest value is the most
                // background-like for every normalisation.
                let floor = channel.iter().copied().fold(f32::INFINITY, f32::min);
                pad_to(channel.to_owned(), patch, floor)
            })
            .collect();
        let views: Vec<_> = channels.iter().map(|c| c.view()).collect();
        let image = ndarray::stack(Axis(0), &views).expect("channels share one padded shape");
        let mut voxels_by_class = vec![Vec::new(); class_count];
        for (flat, &class) in classes.iter().enumerate() {
            if let Some(list) = voxels_by_class.get_mut(usize::from(class)) {
                list.push(flat as u32);
            }
        }
        Self {
            id: subject.id.clone(),
            image,
            classes,
            voxels_by_class,
        }
    }

    fn shape(&self) -> [usize; 3] {
        let (i, j, k) = self.classes.dim();
        [i, j, k]
    }
}

/// One training patch.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    /// Image, `[channel, i, j, k]`.
    pub image: Array4<f32>,
    /// Class map, `[i, j, k]`.
    pub classes: Array3<u8>,
    /// Where the patch starts in the (padded) subject, before any flip.
    pub origin: [usize; 3],
    /// The voxel the patch was centred on, and its class.
    pub centre: [usize; 3],
    /// The class drawn for the centre.
    pub centre_class: u8,
}

/// How patches are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchSampler {
    /// Patch size along i, j, k.
    pub patch: [usize; 3],
    /// Weight of each class (background first) when drawing the centre class.
    pub class_weights: Vec<f64>,
    /// Axes that may be mirrored.
    pub flip_axes: Vec<usize>,
    /// Probability of mirroring along each of `flip_axes`.
    pub flip_probability: f64,
}

/// Independent random streams derived from the run's seed, so that adding draws to one stream
/// never shifts another.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// Order of subjects within an epoch.
    Order = 1,
    /// Patch centres and flips.
    Patches = 2,
    /// LibTorch's generator (weight initialisation, dropout).
    Torch = 3,
}

/// A seed for one stream of one epoch, mixed with SplitMix64 so that nearby inputs give
/// unrelated seeds.
pub fn stream_seed(seed: u64, epoch: u64, stream: Stream) -> u64 {
    let mut z = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (stream as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl PatchSampler {
    /// Draws one patch from every subject for `epoch`, in a shuffled order.
    pub fn draw_epoch(&self, subjects: &[SamplingSubject], seed: u64, epoch: u64) -> Vec<Patch> {
        let mut order: Vec<usize> = (0..subjects.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(stream_seed(
            seed,
            epoch,
            Stream::Order,
        )));
        let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, epoch, Stream::Patches));
        order
            .into_iter()
            .map(|i| self.draw(&subjects[i], &mut rng))
            .collect()
    }

    /// Draws one patch from one subject.
    pub fn draw(&self, subject: &SamplingSubject, rng: &mut ChaCha8Rng) -> Patch {
        let shape = subject.shape();
        let present: Vec<(usize, f64)> = self
            .class_weights
            .iter()
            .enumerate()
            .filter(|(class, w)| **w > 0.0 && !subject.voxels_by_class[*class].is_empty())
            .map(|(class, w)| (class, *w))
            .collect();

        let centre = if present.is_empty() {
            // No class with a positive weight occurs in this subject: any voxel will do.
            [
                rng.random_range(0..shape[0]),
                rng.random_range(0..shape[1]),
                rng.random_range(0..shape[2]),
            ]
        } else {
            let total: f64 = present.iter().map(|(_, w)| w).sum();
            let mut target = rng.random::<f64>() * total;
            let mut class = present[present.len() - 1].0;
            for &(c, w) in &present {
                if target < w {
                    class = c;
                    break;
                }
                target -= w;
            }
            let voxels = &subject.voxels_by_class[class];
            let flat = voxels[rng.random_range(0..voxels.len())] as usize;
            let plane = shape[1] * shape[2];
            [flat / plane, (flat / shape[2]) % shape[1], flat % shape[2]]
        };

        let origin: [usize; 3] = std::array::from_fn(|axis| {
            let half = self.patch[axis] / 2;
            // Shift inward: the patch keeps its size and stays inside the (padded) volume.
            centre[axis]
                .saturating_sub(half)
                .min(shape[axis] - self.patch[axis])
        });
        let [ri, rj, rk]: [std::ops::Range<usize>; 3] =
            std::array::from_fn(|axis| origin[axis]..origin[axis] + self.patch[axis]);
        let mut image = subject
            .image
            .slice(s![.., ri.clone(), rj.clone(), rk.clone()])
            .to_owned();
        let mut classes = subject.classes.slice(s![ri, rj, rk]).to_owned();
        let centre_class = subject.classes[centre];
        for &axis in &self.flip_axes {
            if rng.random_bool(self.flip_probability) {
                image.invert_axis(Axis(axis + 1));
                classes.invert_axis(Axis(axis));
            }
        }
        Patch {
            image: image.as_standard_layout().into_owned(),
            classes: classes.as_standard_layout().into_owned(),
            origin,
            centre,
            centre_class,
        }
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array3, Array4};

    use super::*;

    /// A 10×12×14 subject whose structure 1 is a 2×2×2 cube in a corner and structure 2 a
    /// single voxel, so that where a patch may be centred is known exactly.
    fn subject() -> SamplingSubject {
        let shape = (10, 12, 14);
        let mut masks = Array4::<u8>::zeros((2, shape.0, shape.1, shape.2));
        for (i, j, k) in ndarray::indices((2, 2, 2)) {
            masks[[0, i, j, k]] = 1;
        }
        masks[[1, 7, 6, 5]] = 1;
        let image = Array3::from_shape_fn(shape, |(i, j, k)| (i * 1000 + j * 100 + k) as f32)
            .insert_axis(Axis(0));
        let subject = Subject {
            id: "s".into(),
            image,
            masks: Some(masks),
            spacing_mm: [1.0; 3],
            header: Default::default(),
            warnings: Vec::new(),
        };
        SamplingSubject::new(&subject, [4, 6, 8], 3)
    }

    fn sampler(class_weights: Vec<f64>, flip_axes: Vec<usize>) -> PatchSampler {
        PatchSampler {
            patch: [4, 6, 8],
            class_weights,
            flip_axes,
            flip_probability: 0.5,
        }
    }

    #[test]
    fn same_seed_and_epoch_draw_the_same_patches() {
        let subjects = vec![subject(), subject(), subject()];
        let s = sampler(vec![1.0, 1.0, 1.0], vec![0, 2]);
        assert_eq!(s.draw_epoch(&subjects, 9, 4), s.draw_epoch(&subjects, 9, 4));
        let origins = |seed, epoch| -> Vec<[usize; 3]> {
            s.draw_epoch(&subjects, seed, epoch)
                .iter()
                .map(|p| p.centre)
                .collect()
        };
        assert_ne!(
            origins(9, 4),
            origins(9, 5),
            "another epoch draws other patches"
        );
        assert_ne!(
            origins(9, 4),
            origins(10, 4),
            "another seed draws other patches"
        );
    }

    #[test]
    fn class_weights_choose_the_class_of_the_centre() {
        let s = subject();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            let patch = sampler(vec![0.0, 0.0, 1.0], vec![]).draw(&s, &mut rng);
            assert_eq!((patch.centre, patch.centre_class), ([7, 6, 5], 2));
            let patch = sampler(vec![0.0, 1.0, 0.0], vec![]).draw(&s, &mut rng);
            assert_eq!(patch.centre_class, 1);
            let patch = sampler(vec![1.0, 0.0, 0.0], vec![]).draw(&s, &mut rng);
            assert_eq!(patch.centre_class, 0);
        }
    }

    #[test]
    fn patches_at_the_border_are_shifted_inward_and_keep_their_size() {
        let s = subject();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let patch = sampler(vec![0.0, 1.0, 0.0], vec![]).draw(&s, &mut rng);
        // The cube sits at the origin: a centred patch would start at negative indices.
        assert_eq!(patch.origin, [0, 0, 0]);
        assert_eq!(patch.image.dim(), (1, 4, 6, 8));
        assert_eq!(patch.classes.dim(), (4, 6, 8));
        let patch = sampler(vec![0.0, 0.0, 1.0], vec![]).draw(&s, &mut rng);
        // Centre (7, 6, 5) lies far enough inside: the patch is centred on it.
        assert_eq!(patch.origin, [5, 3, 1]);
        assert_eq!(patch.image[[0, 0, 0, 0]], (5 * 1000 + 3 * 100 + 1) as f32);
        assert_eq!(
            patch.classes[[2, 3, 4]],
            2,
            "the centre voxel keeps its class"
        );
    }

    #[test]
    fn flips_mirror_image_and_classes_together() {
        let s = subject();
        let flipping = PatchSampler {
            flip_probability: 1.0,
            ..sampler(vec![0.0, 0.0, 1.0], vec![0])
        };
        let plain = sampler(vec![0.0, 0.0, 1.0], vec![]);
        let flipped = flipping.draw(&s, &mut ChaCha8Rng::seed_from_u64(3));
        let unflipped = plain.draw(&s, &mut ChaCha8Rng::seed_from_u64(3));
        let mut mirrored = unflipped.image.clone();
        mirrored.invert_axis(Axis(1));
        assert_eq!(flipped.image, mirrored);
        let mut mirrored = unflipped.classes.clone();
        mirrored.invert_axis(Axis(0));
        assert_eq!(flipped.classes, mirrored);
    }

    #[test]
    fn small_subjects_are_padded_to_the_patch_size() {
        let small = Subject {
            id: "small".into(),
            image: Array4::from_elem((1, 2, 3, 4), 5.0),
            masks: Some(Array4::from_elem((1, 2, 3, 4), 1)),
            spacing_mm: [1.0; 3],
            header: Default::default(),
            warnings: Vec::new(),
        };
        let prepared = SamplingSubject::new(&small, [4, 6, 8], 2);
        assert_eq!(prepared.classes.dim(), (4, 6, 8));
        let patch =
            sampler(vec![1.0, 1.0], vec![]).draw(&prepared, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(patch.image.dim(), (1, 4, 6, 8));
        assert_eq!(patch.classes.iter().filter(|&&c| c == 1).count(), 2 * 3 * 4);
    }
}
