//! Surface voxels, the exact Euclidean distance transform, and the surface-distance metrics
//! (Hausdorff distance, the two HD95 definitions and the mean surface distance).

use ndarray::ArrayView3;

use super::{SpacingMm, check_same_shape, check_spacing, require};

/// The percentile of the robust Hausdorff distance (HD95).
const ROBUST_HAUSDORFF_PERCENTILE: f64 = 95.0;

/// Distances between the surfaces of a predicted and a ground-truth mask, in mm.
///
/// See the module documentation for the definitions and for the values taken when a mask is
/// empty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SurfaceDistances {
    /// Hausdorff distance: the largest surface distance in either direction, in mm.
    pub hausdorff_mm: f64,
    /// 95th percentile of the pooled surface distances of both directions (medpy), in mm.
    pub hausdorff95_mm: f64,
    /// Larger of the two directed 95th percentiles (MONAI), in mm.
    pub hausdorff95_max_directed_mm: f64,
    /// Mean of the pooled surface distances of both directions (ASSD), in mm.
    pub mean_surface_distance_mm: f64,
}

impl SurfaceDistances {
    /// Every distance set to the same value: NaN or +∞ for the empty-mask conventions.
    fn all(value_mm: f64) -> Self {
        Self {
            hausdorff_mm: value_mm,
            hausdorff95_mm: value_mm,
            hausdorff95_max_directed_mm: value_mm,
            mean_surface_distance_mm: value_mm,
        }
    }
}

/// Computes the surface distances between a predicted and a ground-truth mask.
///
/// Both masks are indexed `[i, j, k]`; `spacing_mm` is the voxel size along those axes.
/// Distances are exact Euclidean distances between voxel centres, not approximations.
///
/// # Panics
///
/// When the masks differ in shape or a spacing value is not finite and positive: the caller
/// guarantees both. [`evaluate_structure`](super::evaluate_structure) returns an error
/// instead.
#[track_caller]
pub fn surface_distances(
    prediction: ArrayView3<bool>,
    truth: ArrayView3<bool>,
    spacing_mm: SpacingMm,
) -> SurfaceDistances {
    require(check_same_shape(&prediction, &truth));
    require(check_spacing(spacing_mm));

    let prediction = VoxelGrid::from_view(prediction);
    let truth = VoxelGrid::from_view(truth);
    let region = match (bounding_box(&prediction), bounding_box(&truth)) {
        (None, None) => return SurfaceDistances::all(f64::NAN),
        (None, Some(_)) | (Some(_), None) => return SurfaceDistances::all(f64::INFINITY),
        (Some(predicted_box), Some(truth_box)) => predicted_box.union(truth_box),
    };

    // Every voxel of either mask lies in `region`, so every voxel just outside it is
    // background for both masks: cropping changes neither surface, and both the features
    // and the query points of each distance transform lie inside it. The result is exact.
    let prediction_surface = surface_voxels(&region.crop(&prediction));
    let truth_surface = surface_voxels(&region.crop(&truth));
    let prediction_to_truth = distances_at(
        &prediction_surface,
        &squared_distance_transform(&truth_surface, spacing_mm),
    );
    let truth_to_prediction = distances_at(
        &truth_surface,
        &squared_distance_transform(&prediction_surface, spacing_mm),
    );

    summarise(prediction_to_truth, truth_to_prediction)
}

/// The `q`th percentile (`q` in [0, 100]) of values sorted in ascending order.
///
/// Uses linear interpolation between the two nearest ranks, numpy's default method: with `n`
/// values v₀ ≤ … ≤ vₙ₋₁ and h = q / 100 · (n − 1), the result is
/// v⌊h⌋ + (h − ⌊h⌋)(v⌊h⌋₊₁ − v⌊h⌋). Returns NaN for an empty slice and for `q` outside
/// [0, 100] (numpy raises there); unsorted input gives a meaningless value.
pub fn percentile_linear(sorted: &[f64], q: f64) -> f64 {
    let Some(last_rank) = sorted.len().checked_sub(1) else {
        return f64::NAN;
    };
    if !(0.0..=100.0).contains(&q) {
        return f64::NAN;
    }

    let rank = q / 100.0 * last_rank as f64;
    // `rank` lies in [0, last_rank], so the truncating conversion is a floor within bounds.
    let below = (rank.floor() as usize).min(last_rank);
    let above = (below + 1).min(last_rank);
    let fraction = rank - below as f64;
    let (lower, upper) = (sorted[below], sorted[above]);

    // Interpolating from the nearer end, as numpy does, makes the result agree with numpy's
    // to the last bit and keeps it exact when both neighbours are equal.
    if fraction >= 0.5 {
        upper - (upper - lower) * (1.0 - fraction)
    } else {
        lower + (upper - lower) * fraction
    }
}

/// The surface voxels of `mask`: its voxels with at least one of their six face neighbours
/// outside the mask, where outside the grid counts as background.
///
/// This is the mask minus its erosion by the 6-connected cross with a background border.
pub(crate) fn surface_voxels(mask: &VoxelGrid<bool>) -> VoxelGrid<bool> {
    let [ni, nj, nk] = mask.shape;
    let (step_i, step_j) = (nj * nk, nk);
    let inside = &mask.voxels;
    let mut surface = VoxelGrid::filled(mask.shape, false);

    for i in 0..ni {
        for j in 0..nj {
            for k in 0..nk {
                let at = mask.offset([i, j, k]);
                if !inside[at] {
                    continue;
                }
                // `||` short-circuits, so no neighbour is read across the grid border.
                let on_border = i == 0 || j == 0 || k == 0;
                let on_far_border = i + 1 == ni || j + 1 == nj || k + 1 == nk;
                surface.voxels[at] = on_border
                    || on_far_border
                    || !inside[at - step_i]
                    || !inside[at + step_i]
                    || !inside[at - step_j]
                    || !inside[at + step_j]
                    || !inside[at - 1]
                    || !inside[at + 1];
            }
        }
    }
    surface
}

/// Squared Euclidean distance in mm² from every voxel centre to the nearest feature voxel
/// centre; +∞ everywhere when there is no feature.
///
/// This is the exact separable transform of Felzenszwalb and Huttenlocher ("Distance
/// Transforms of Sampled Functions", Theory of Computing 8, 2012): a 1D transform along k,
/// then along j, then along i, each taking the lower envelope of parabolas whose width is
/// set by the spacing of that axis. Its cost is linear in the number of voxels.
pub(crate) fn squared_distance_transform(
    features: &VoxelGrid<bool>,
    spacing_mm: SpacingMm,
) -> VoxelGrid<f64> {
    let mut squared_mm2 = VoxelGrid {
        shape: features.shape,
        voxels: features
            .voxels
            .iter()
            .map(|&is_feature| if is_feature { 0.0 } else { f64::INFINITY })
            .collect(),
    };

    let mut envelope = LowerEnvelope::default();
    // k first: its lines are contiguous, and the first pass sees the sparsest input.
    for axis in [2, 1, 0] {
        transform_along(&mut squared_mm2, axis, spacing_mm[axis], &mut envelope);
    }
    squared_mm2
}

/// Runs the 1D transform on every line of the grid along `axis`, whose voxels are `step_mm`
/// apart.
fn transform_along(
    squared_mm2: &mut VoxelGrid<f64>,
    axis: usize,
    step_mm: f64,
    envelope: &mut LowerEnvelope,
) {
    let length = squared_mm2.shape[axis];
    // In C order, neighbours along `axis` are `stride` apart, the product of the later
    // axes' sizes; a line starts at every voxel whose index along `axis` is 0.
    let stride: usize = squared_mm2.shape[axis + 1..].iter().product();
    let blocks: usize = squared_mm2.shape[..axis].iter().product();
    let mut line = vec![0.0; length];
    let mut transformed = vec![0.0; length];

    for block in 0..blocks {
        // Neighbouring lines of one block are read side by side, which keeps the strided
        // reads of the i and j passes cache friendly.
        for line_start in (0..stride).map(|offset| block * length * stride + offset) {
            for (position, value) in line.iter_mut().enumerate() {
                *value = squared_mm2.voxels[line_start + position * stride];
            }
            envelope.transform(&line, step_mm, &mut transformed);
            for (position, &value) in transformed.iter().enumerate() {
                squared_mm2.voxels[line_start + position * stride] = value;
            }
        }
    }
}

/// Working memory of the 1D squared distance transform, kept between lines so that no line
/// allocates.
#[derive(Debug, Default)]
struct LowerEnvelope {
    /// Sample positions whose parabolas form the lower envelope, left to right.
    apexes: Vec<usize>,
    /// Where in mm each envelope parabola starts to be the lowest; parallel to `apexes`.
    starts_mm: Vec<f64>,
}

impl LowerEnvelope {
    /// Writes `transformed[q] = min over p of ((q − p) · step_mm)² + sampled[p]`.
    ///
    /// Samples that are +∞ (no feature reached yet) are left out of the envelope: they can
    /// never be the minimum, and their intersections would be ∞ − ∞.
    fn transform(&mut self, sampled: &[f64], step_mm: f64, transformed: &mut [f64]) {
        self.apexes.clear();
        self.starts_mm.clear();

        for (position, &height) in sampled.iter().enumerate() {
            if height.is_infinite() {
                continue;
            }
            let position_mm = position as f64 * step_mm;
            // Drop the parabolas that the new one hides entirely: those whose stretch of
            // the envelope begins at or beyond where the new one undercuts them.
            let mut start_mm = f64::NEG_INFINITY;
            while let Some(&previous) = self.apexes.last() {
                let previous_mm = previous as f64 * step_mm;
                start_mm = (previous_mm + position_mm) / 2.0
                    + (height - sampled[previous]) / (2.0 * (position_mm - previous_mm));
                match self.starts_mm.last() {
                    Some(&previous_start_mm) if start_mm <= previous_start_mm => {
                        self.apexes.pop();
                        self.starts_mm.pop();
                        start_mm = f64::NEG_INFINITY;
                    }
                    _ => break,
                }
            }
            self.apexes.push(position);
            self.starts_mm.push(start_mm);
        }

        if self.apexes.is_empty() {
            transformed.fill(f64::INFINITY);
            return;
        }
        let mut segment = 0;
        for (position, value) in transformed.iter_mut().enumerate() {
            let position_mm = position as f64 * step_mm;
            while segment + 1 < self.apexes.len() && self.starts_mm[segment + 1] < position_mm {
                segment += 1;
            }
            let apex = self.apexes[segment];
            let offset_mm = position_mm - apex as f64 * step_mm;
            *value = offset_mm * offset_mm + sampled[apex];
        }
    }
}

/// A 3D grid of voxels stored flat in C order: axes [i, j, k], k varying fastest.
///
/// The hot loops of the metrics run on plain slices rather than on ndarray iterators, which
/// keeps them fast in unoptimised (debug) builds too.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VoxelGrid<T> {
    /// Number of voxels along i, j, k.
    shape: [usize; 3],
    /// Voxel values; the value of [i, j, k] is at `(i * shape[1] + j) * shape[2] + k`.
    voxels: Vec<T>,
}

impl<T: Copy> VoxelGrid<T> {
    /// Copies a view of any memory layout into C order.
    fn from_view(view: ArrayView3<T>) -> Self {
        // `iter` visits the elements in logical C order whatever the strides are; a
        // contiguous view in standard layout is copied in one go instead.
        let voxels = match view.as_slice() {
            Some(contiguous) => contiguous.to_vec(),
            None => view.iter().copied().collect(),
        };
        Self {
            shape: view.dim().into(),
            voxels,
        }
    }

    /// A grid of the given shape with every voxel set to `value`.
    fn filled(shape: [usize; 3], value: T) -> Self {
        Self {
            shape,
            voxels: vec![value; shape.iter().product()],
        }
    }

    /// Position of voxel [i, j, k] in `voxels`.
    fn offset(&self, [i, j, k]: [usize; 3]) -> usize {
        (i * self.shape[1] + j) * self.shape[2] + k
    }
}

/// The voxels of a 3D grid from `start` (inclusive) to `end` (exclusive) along i, j, k.
#[derive(Debug, Clone, Copy, PartialEq)]
struct VoxelBox {
    /// First index inside the box along i, j, k.
    start: [usize; 3],
    /// First index past the box along i, j, k.
    end: [usize; 3],
}

impl VoxelBox {
    /// The smallest box holding both boxes.
    fn union(self, other: Self) -> Self {
        Self {
            start: std::array::from_fn(|axis| self.start[axis].min(other.start[axis])),
            end: std::array::from_fn(|axis| self.end[axis].max(other.end[axis])),
        }
    }

    /// A copy of the part of `grid` inside the box.
    fn crop<T: Copy>(&self, grid: &VoxelGrid<T>) -> VoxelGrid<T> {
        let shape = std::array::from_fn(|axis| self.end[axis] - self.start[axis]);
        let mut voxels = Vec::with_capacity(shape.iter().product());
        for i in self.start[0]..self.end[0] {
            for j in self.start[1]..self.end[1] {
                let row_start = grid.offset([i, j, self.start[2]]);
                voxels.extend_from_slice(&grid.voxels[row_start..row_start + shape[2]]);
            }
        }
        VoxelGrid { shape, voxels }
    }
}

/// The smallest box holding every voxel of `mask`, or `None` when the mask is empty.
fn bounding_box(mask: &VoxelGrid<bool>) -> Option<VoxelBox> {
    let [ni, nj, nk] = mask.shape;
    let mut found: Option<VoxelBox> = None;

    for i in 0..ni {
        for j in 0..nj {
            let row_start = mask.offset([i, j, 0]);
            let row = &mask.voxels[row_start..row_start + nk];
            let Some(first_k) = row.iter().position(|&inside| inside) else {
                continue;
            };
            // Never `None`: the row holds the voxel at `first_k`.
            let last_k = row.iter().rposition(|&inside| inside).unwrap_or(first_k);
            let row_box = VoxelBox {
                start: [i, j, first_k],
                end: [i + 1, j + 1, last_k + 1],
            };
            found = Some(found.map_or(row_box, |so_far| so_far.union(row_box)));
        }
    }
    found
}

/// The distances in mm stored at the surface voxels, read from a squared distance map in mm²
/// of the same grid.
fn distances_at(surface: &VoxelGrid<bool>, squared_distance_mm2: &VoxelGrid<f64>) -> Vec<f64> {
    surface
        .voxels
        .iter()
        .zip(&squared_distance_mm2.voxels)
        .filter(|&(&on_surface, _)| on_surface)
        .map(|(_, &squared_mm2)| squared_mm2.sqrt())
        .collect()
}

/// Reduces the two directed sets of surface distances, both non-empty, to the metrics.
fn summarise(
    mut prediction_to_truth: Vec<f64>,
    mut truth_to_prediction: Vec<f64>,
) -> SurfaceDistances {
    prediction_to_truth.sort_unstable_by(f64::total_cmp);
    truth_to_prediction.sort_unstable_by(f64::total_cmp);
    let largest = |sorted: &[f64]| sorted.last().copied().unwrap_or(f64::NAN);

    let hausdorff_mm = largest(&prediction_to_truth).max(largest(&truth_to_prediction));
    let hausdorff95_max_directed_mm =
        percentile_linear(&prediction_to_truth, ROBUST_HAUSDORFF_PERCENTILE).max(
            percentile_linear(&truth_to_prediction, ROBUST_HAUSDORFF_PERCENTILE),
        );

    let mut pooled = prediction_to_truth;
    pooled.extend_from_slice(&truth_to_prediction);
    pooled.sort_unstable_by(f64::total_cmp);
    let mean_surface_distance_mm = pooled.iter().sum::<f64>() / pooled.len() as f64;

    SurfaceDistances {
        hausdorff_mm,
        hausdorff95_mm: percentile_linear(&pooled, ROBUST_HAUSDORFF_PERCENTILE),
        hausdorff95_max_directed_mm,
        mean_surface_distance_mm,
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array3;

    use super::*;

    /// Tolerance for values that differ from the brute-force ones only by rounding.
    const ROUNDING_TOLERANCE: f64 = 1e-9;

    /// A small deterministic pseudo-random generator (xorshift64), so that the random masks
    /// are the same on every run without a dependency.
    struct Xorshift(u64);

    impl Xorshift {
        fn next_fraction(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1_u64 << 53) as f64
        }
    }

    fn grid_from_fn(
        shape: [usize; 3],
        mut value: impl FnMut([usize; 3]) -> bool,
    ) -> VoxelGrid<bool> {
        let mut grid = VoxelGrid::filled(shape, false);
        for i in 0..shape[0] {
            for j in 0..shape[1] {
                for k in 0..shape[2] {
                    let at = grid.offset([i, j, k]);
                    grid.voxels[at] = value([i, j, k]);
                }
            }
        }
        grid
    }

    fn random_grid(shape: [usize; 3], density: f64, random: &mut Xorshift) -> VoxelGrid<bool> {
        grid_from_fn(shape, |_| random.next_fraction() < density)
    }

    fn indices(shape: [usize; 3]) -> impl Iterator<Item = [usize; 3]> {
        (0..shape[0]).flat_map(move |i| {
            (0..shape[1]).flat_map(move |j| (0..shape[2]).map(move |k| [i, j, k]))
        })
    }

    fn to_array(grid: &VoxelGrid<bool>) -> Array3<bool> {
        Array3::from_shape_fn(grid.shape, |(i, j, k)| grid.voxels[grid.offset([i, j, k])])
    }

    /// The surface by its definition: a mask voxel with a face neighbour that is outside the
    /// grid or outside the mask.
    fn brute_force_surface(mask: &VoxelGrid<bool>) -> VoxelGrid<bool> {
        let steps: [[i64; 3]; 6] = [
            [-1, 0, 0],
            [1, 0, 0],
            [0, -1, 0],
            [0, 1, 0],
            [0, 0, -1],
            [0, 0, 1],
        ];
        grid_from_fn(mask.shape, |index| {
            let inside_at = |step: [i64; 3]| {
                let neighbour: [i64; 3] = std::array::from_fn(|a| index[a] as i64 + step[a]);
                let in_grid = (0..3).all(|a| (0..mask.shape[a] as i64).contains(&neighbour[a]));
                in_grid && mask.voxels[mask.offset(neighbour.map(|n| n as usize))]
            };
            mask.voxels[mask.offset(index)] && steps.iter().any(|&step| !inside_at(step))
        })
    }

    fn squared_distance_mm2(a: [usize; 3], b: [usize; 3], spacing_mm: SpacingMm) -> f64 {
        (0..3)
            .map(|axis| ((a[axis] as f64 - b[axis] as f64) * spacing_mm[axis]).powi(2))
            .sum()
    }

    fn brute_force_squared_distances(
        features: &VoxelGrid<bool>,
        spacing_mm: SpacingMm,
    ) -> VoxelGrid<f64> {
        let feature_voxels: Vec<_> = indices(features.shape)
            .filter(|&f| features.voxels[features.offset(f)])
            .collect();
        let mut squared = VoxelGrid::filled(features.shape, f64::INFINITY);
        for voxel in indices(features.shape) {
            let at = squared.offset(voxel);
            for &feature in &feature_voxels {
                squared.voxels[at] =
                    squared.voxels[at].min(squared_distance_mm2(voxel, feature, spacing_mm));
            }
        }
        squared
    }

    fn assert_close(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() <= ROUNDING_TOLERANCE * expected.abs().max(1.0),
            "{what}: got {actual}, expected {expected}"
        );
    }

    #[test]
    fn single_voxel_is_its_own_surface() {
        let mask = grid_from_fn([3, 3, 3], |index| index == [1, 1, 1]);
        assert_eq!(surface_voxels(&mask), mask);
    }

    #[test]
    fn surface_of_a_solid_cube_is_its_shell_without_the_centre() {
        let cube = grid_from_fn([5, 5, 5], |index| {
            index.iter().all(|&n| (1..4).contains(&n))
        });
        let surface = surface_voxels(&cube);
        assert_eq!(
            surface
                .voxels
                .iter()
                .filter(|&&on_surface| on_surface)
                .count(),
            26
        );
        assert!(!surface.voxels[surface.offset([2, 2, 2])]);
    }

    #[test]
    fn mask_voxels_on_the_grid_border_are_surface_voxels() {
        // A mask filling the whole grid has its border as surface: outside is background.
        // Only the 1 × 2 × 3 block that does not touch the border is interior.
        let full = VoxelGrid::filled([3, 4, 5], true);
        let surface = surface_voxels(&full);
        let interior = 6;
        assert_eq!(
            surface
                .voxels
                .iter()
                .filter(|&&on_surface| on_surface)
                .count(),
            60 - interior
        );
    }

    #[test]
    fn surface_matches_the_six_neighbour_definition_on_random_masks() {
        let mut random = Xorshift(0x5eed_0001);
        for density in [0.1, 0.5, 0.9] {
            let mask = random_grid([6, 7, 5], density, &mut random);
            assert_eq!(
                surface_voxels(&mask),
                brute_force_surface(&mask),
                "density {density}"
            );
        }
    }

    #[test]
    fn distance_to_one_feature_is_the_euclidean_distance_in_mm() {
        let spacing_mm = [0.5, 2.0, 3.0];
        let feature = [1, 2, 3];
        let features = grid_from_fn([4, 5, 6], |index| index == feature);
        let squared = squared_distance_transform(&features, spacing_mm);
        for voxel in indices(features.shape) {
            let expected = squared_distance_mm2(voxel, feature, spacing_mm);
            assert_close(
                squared.voxels[squared.offset(voxel)],
                expected,
                &format!("{voxel:?}"),
            );
        }
    }

    #[test]
    fn distance_without_any_feature_is_infinite_everywhere() {
        let squared = squared_distance_transform(&VoxelGrid::filled([3, 4, 5], false), [1.0; 3]);
        assert!(squared.voxels.iter().all(|&value| value == f64::INFINITY));
    }

    #[test]
    fn distance_transform_matches_brute_force_with_anisotropic_spacing() {
        let mut random = Xorshift(0x5eed_0002);
        for (density, spacing_mm) in [
            (0.02, [0.9765625, 0.9765625, 2.0]),
            (0.1, [0.7, 1.3, 2.9]),
            (0.5, [3.0, 0.4, 1.1]),
        ] {
            let features = random_grid([7, 9, 6], density, &mut random);
            let squared = squared_distance_transform(&features, spacing_mm);
            let expected = brute_force_squared_distances(&features, spacing_mm);
            for voxel in indices(features.shape) {
                let at = squared.offset(voxel);
                let what = format!("voxel {voxel:?}, density {density}, spacing {spacing_mm:?}");
                assert_close(squared.voxels[at], expected.voxels[at], &what);
            }
        }
    }

    #[test]
    fn percentile_interpolates_linearly_between_ranks_like_numpy() {
        // h = 0.95 · 4 = 3.8, so the result is 4 + 0.8 · (10 − 4).
        assert_close(
            percentile_linear(&[1.0, 2.0, 3.0, 4.0, 10.0], 95.0),
            8.8,
            "95th of 5",
        );
        // h = 0.95 · 3 = 2.85, so the result is 3 + 0.85 · (4 − 3).
        assert_close(
            percentile_linear(&[1.0, 2.0, 3.0, 4.0], 95.0),
            3.85,
            "95th of 4",
        );
        assert_eq!(percentile_linear(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.5);
        assert_eq!(percentile_linear(&[1.0, 2.0, 3.0, 4.0], 0.0), 1.0);
        assert_eq!(percentile_linear(&[1.0, 2.0, 3.0, 4.0], 100.0), 4.0);
        assert_eq!(percentile_linear(&[1.5, 1.5, 1.5, 9.0], 50.0), 1.5);
        assert_eq!(percentile_linear(&[2.0], 95.0), 2.0);
    }

    #[test]
    fn percentile_of_no_values_or_outside_0_to_100_is_nan() {
        assert!(percentile_linear(&[], 95.0).is_nan());
        assert!(percentile_linear(&[1.0, 2.0], -1.0).is_nan());
        assert!(percentile_linear(&[1.0, 2.0], 100.5).is_nan());
        assert!(percentile_linear(&[1.0, 2.0], f64::NAN).is_nan());
    }

    #[test]
    fn identical_masks_are_zero_mm_apart() {
        let mask = to_array(&random_grid([5, 6, 7], 0.4, &mut Xorshift(0x5eed_0003)));
        let distances = surface_distances(mask.view(), mask.view(), [0.8, 1.0, 2.5]);
        assert_eq!(distances, SurfaceDistances::all(0.0));
    }

    #[test]
    fn two_single_voxels_are_their_centre_distance_apart_in_mm() {
        let prediction = Array3::from_shape_fn((2, 3, 4), |index| index == (0, 0, 0));
        let truth = Array3::from_shape_fn((2, 3, 4), |index| index == (0, 0, 2));
        let distances = surface_distances(prediction.view(), truth.view(), [1.0, 1.0, 1.5]);
        assert_eq!(distances, SurfaceDistances::all(3.0));
    }

    #[test]
    fn surface_distances_match_brute_force_on_random_masks() {
        let mut random = Xorshift(0x5eed_0004);
        let spacing_mm = [0.7, 1.1, 2.3];
        for (prediction_density, truth_density) in [(0.3, 0.3), (0.05, 0.6), (0.8, 0.2)] {
            let prediction = random_grid([6, 7, 8], prediction_density, &mut random);
            let truth = random_grid([6, 7, 8], truth_density, &mut random);

            let directed = |from: &VoxelGrid<bool>, to: &VoxelGrid<bool>| -> Vec<f64> {
                let to_surface = brute_force_surface(to);
                let squared = brute_force_squared_distances(&to_surface, spacing_mm);
                let from_surface = brute_force_surface(from);
                let mut distances: Vec<f64> = indices(from.shape)
                    .filter(|&voxel| from_surface.voxels[from_surface.offset(voxel)])
                    .map(|voxel| squared.voxels[squared.offset(voxel)].sqrt())
                    .collect();
                distances.sort_by(f64::total_cmp);
                distances
            };
            let prediction_to_truth = directed(&prediction, &truth);
            let truth_to_prediction = directed(&truth, &prediction);
            let mut pooled = [prediction_to_truth.clone(), truth_to_prediction.clone()].concat();
            pooled.sort_by(f64::total_cmp);

            let distances = surface_distances(
                to_array(&prediction).view(),
                to_array(&truth).view(),
                spacing_mm,
            );
            let what = format!("densities {prediction_density} and {truth_density}");
            assert_close(distances.hausdorff_mm, pooled[pooled.len() - 1], &what);
            assert_close(
                distances.hausdorff95_mm,
                percentile_linear(&pooled, 95.0),
                &what,
            );
            assert_close(
                distances.hausdorff95_max_directed_mm,
                percentile_linear(&prediction_to_truth, 95.0)
                    .max(percentile_linear(&truth_to_prediction, 95.0)),
                &what,
            );
            assert_close(
                distances.mean_surface_distance_mm,
                pooled.iter().sum::<f64>() / pooled.len() as f64,
                &what,
            );
        }
    }

    #[test]
    fn cropping_to_the_masks_does_not_change_distances_near_the_grid_border() {
        // Both masks touch the far k border, where the crop and the grid border coincide,
        // and the crop border elsewhere; the same masks padded by empty voxels must agree.
        let prediction = Array3::from_shape_fn((4, 4, 5), |(i, j, k)| i >= 1 && j <= 2 && k >= 2);
        let truth = Array3::from_shape_fn((4, 4, 5), |(i, j, k)| i >= 2 && j <= 3 && k >= 1);
        let padded = |mask: &Array3<bool>| {
            let mut larger = Array3::from_elem((6, 6, 7), false);
            larger.slice_mut(ndarray::s![1..5, 1..5, 1..6]).assign(mask);
            larger
        };
        let spacing_mm = [0.9765625, 0.9765625, 2.0];

        let unpadded = surface_distances(prediction.view(), truth.view(), spacing_mm);
        let in_larger_grid = surface_distances(
            padded(&prediction).view(),
            padded(&truth).view(),
            spacing_mm,
        );
        assert_eq!(unpadded, in_larger_grid);
    }

    #[test]
    fn one_empty_mask_puts_the_surfaces_infinitely_far_apart() {
        let empty = Array3::from_elem((4, 4, 4), false);
        let structure = Array3::from_shape_fn((4, 4, 4), |index| index == (1, 2, 3));
        let missed = surface_distances(empty.view(), structure.view(), [1.0; 3]);
        let spurious = surface_distances(structure.view(), empty.view(), [1.0; 3]);
        assert_eq!(missed, SurfaceDistances::all(f64::INFINITY));
        assert_eq!(spurious, SurfaceDistances::all(f64::INFINITY));
    }

    #[test]
    fn two_empty_masks_have_no_surface_distance() {
        let empty = Array3::from_elem((4, 4, 4), false);
        let distances = surface_distances(empty.view(), empty.view(), [1.0; 3]);
        assert!(distances.hausdorff_mm.is_nan());
        assert!(distances.hausdorff95_mm.is_nan());
        assert!(distances.hausdorff95_max_directed_mm.is_nan());
        assert!(distances.mean_surface_distance_mm.is_nan());
    }

    #[test]
    #[should_panic(expected = "voxel spacing must be finite and positive")]
    fn zero_spacing_violates_the_precondition_of_surface_distances() {
        let mask = Array3::from_elem((2, 2, 2), true);
        surface_distances(mask.view(), mask.view(), [1.0, 0.0, 1.0]);
    }

    #[test]
    #[should_panic(
        expected = "prediction has shape [2, 3, 4] but ground truth has shape [2, 4, 3]"
    )]
    fn masks_of_different_shapes_violate_the_precondition_of_surface_distances() {
        let prediction = Array3::from_elem((2, 3, 4), true);
        let truth = Array3::from_elem((2, 4, 3), true);
        surface_distances(prediction.view(), truth.view(), [1.0; 3]);
    }
}
