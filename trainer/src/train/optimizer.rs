//! Adam and SGD over the variables of a `VarStore`, with state that can be saved and restored
//! exactly (tch's optimizer wrapper does not expose its state, so a checkpoint could not
//! continue a run bit for bit).

use std::collections::BTreeMap;

use tch::{Tensor, nn::VarStore};
use voxel_crds::experiment::{OptimizerKind, OptimizerSpec};

/// An optimizer bound to the trainable variables of one `VarStore`.
pub struct Optimizer {
    spec: OptimizerSpec,
    /// Trainable variables by name.
    params: Vec<(String, Tensor)>,
    /// Per-variable state: Adam's moments (`<name>.exp_avg`, `<name>.exp_avg_sq`) or SGD's
    /// momentum buffer (`<name>.momentum`).
    state: BTreeMap<String, Tensor>,
    /// Steps taken so far.
    steps: i64,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("spec", &self.spec)
            .field("steps", &self.steps)
            .finish()
    }
}

/// Name of the step counter in saved optimizer state.
const STEPS_KEY: &str = "__steps";

impl Optimizer {
    /// An optimizer for every trainable variable of `vs`.
    pub fn new(vs: &VarStore, spec: &OptimizerSpec) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            spec: spec.clone(),
            params,
            state: BTreeMap::new(),
            steps: 0,
        }
    }

    /// Clears the gradients of all variables.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Applies one update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let spec = self.spec.clone();
        tch::no_grad(|| {
            for (name, param) in &mut self.params {
                let grad = param.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = if spec.weight_decay > 0.0 {
                    &grad + &*param * spec.weight_decay
                } else {
                    grad
                };
                match spec.kind {
                    OptimizerKind::Adam => {
                        let [beta1, beta2] = spec.betas;
                        let exp_avg = state_entry(&mut self.state, name, "exp_avg", param);
                        let _ = exp_avg.g_mul_scalar_(beta1);
                        let _ = exp_avg.g_add_(&(&grad * (1.0 - beta1)));
                        let exp_avg = exp_avg.shallow_clone();
                        let exp_avg_sq = state_entry(&mut self.state, name, "exp_avg_sq", param);
                        let _ = exp_avg_sq.g_mul_scalar_(beta2);
                        let _ = exp_avg_sq.g_add_(&(&grad * &grad * (1.0 - beta2)));
                        let correction1 = 1.0 - beta1.powi(self.steps as i32);
                        let correction2 = 1.0 - beta2.powi(self.steps as i32);
                        let denom = exp_avg_sq.sqrt() / correction2.sqrt() + spec.epsilon;
                        let _ = param.g_sub_(&(exp_avg / denom * (lr / correction1)));
                    }
                    OptimizerKind::Sgd => {
                        let update = if spec.momentum > 0.0 {
                            let fresh = !self.state.contains_key(&format!("{name}.momentum"));
                            let buffer = state_entry(&mut self.state, name, "momentum", param);
                            if fresh {
                                buffer.copy_(&grad);
                            } else {
                                let _ = buffer.g_mul_scalar_(spec.momentum);
                                let _ = buffer.g_add_(&grad);
                            }
                            if spec.nesterov {
                                &grad + &*buffer * spec.momentum
                            } else {
                                buffer.shallow_clone()
                            }
                        } else {
                            grad
                        };
                        let _ = param.g_sub_(&(update * lr));
                    }
                }
            }
        });
    }

    /// Steps taken so far.
    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// The state as named tensors, for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut named: Vec<(String, Tensor)> = self
            .state
            .iter()
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        named.push((STEPS_KEY.to_string(), Tensor::from(self.steps)));
        named
    }

    /// Restores state saved by [`Optimizer::state_tensors`].
    pub fn load_state(&mut self, named: Vec<(String, Tensor)>) -> anyhow::Result<()> {
        let device = self.params.first().map(|(_, p)| p.device());
        self.state.clear();
        for (name, tensor) in named {
            if name == STEPS_KEY {
                self.steps = tensor.int64_value(&[]);
            } else {
                let tensor = match device {
                    Some(device) => tensor.to_device(device),
                    None => tensor,
                };
                self.state.insert(name, tensor);
            }
        }
        Ok(())
    }
}

fn state_entry<'a>(
    state: &'a mut BTreeMap<String, Tensor>,
    param_name: &str,
    slot: &str,
    param: &Tensor,
) -> &'a mut Tensor {
    state
        .entry(format!("{param_name}.{slot}"))
        .or_insert_with(|| param.zeros_like())
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, nn::VarStore};

    use super::*;

    /// One parameter p = 1 with the loss `2 p` (gradient 2), stepped `steps` times.
    fn run(spec: OptimizerSpec, steps: usize, lr: f64) -> Vec<f64> {
        let vs = VarStore::new(Device::Cpu);
        let p = vs.root().ones("p", &[1]);
        let mut optimizer = Optimizer::new(&vs, &spec);
        (0..steps)
            .map(|_| {
                optimizer.zero_grad();
                (&p * 2.0).sum(Kind::Float).backward();
                optimizer.step(lr);
                p.double_value(&[0])
            })
            .collect()
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn adam_moves_by_the_learning_rate_under_a_constant_gradient() {
        // With bias correction, m̂ = g and v̂ = g² at every step, so each step is lr·g/|g|.
        let values = run(OptimizerSpec::default(), 3, 0.1);
        assert!(close(&values, &[0.9, 0.8, 0.7]), "{values:?}");
    }

    #[test]
    fn sgd_momentum_and_nesterov_follow_pytorch_semantics() {
        let sgd = OptimizerSpec {
            kind: OptimizerKind::Sgd,
            ..OptimizerSpec::default()
        };
        // buffer 2 then 0.9·2 + 2 = 3.8.
        assert!(close(&run(sgd.clone(), 2, 0.1), &[0.8, 0.42]));
        // Nesterov: update = g + 0.9·buffer = 2 + 1.8 on the first step.
        let nesterov = OptimizerSpec {
            nesterov: true,
            ..sgd.clone()
        };
        assert!(close(&run(nesterov, 1, 0.1), &[0.62]));
        // L2 weight decay adds wd·p to the gradient: 2 + 0.5·1.
        let decayed = OptimizerSpec {
            weight_decay: 0.5,
            momentum: 0.0,
            ..sgd
        };
        assert!(close(&run(decayed, 1, 0.1), &[0.75]));
    }

    #[test]
    fn saved_state_continues_exactly() {
        let spec = OptimizerSpec::default();
        let vs = VarStore::new(Device::Cpu);
        let mut p = vs.root().ones("p", &[3]);
        let mut first = Optimizer::new(&vs, &spec);
        for _ in 0..2 {
            first.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            first.step(0.05);
        }
        let mut second = Optimizer::new(&vs, &spec);
        second.load_state(first.state_tensors()).unwrap();
        assert_eq!(second.steps(), 2);
        let copy = p.copy();
        for optimizer in [&mut first, &mut second] {
            tch::no_grad(|| p.copy_(&copy));
            optimizer.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            optimizer.step(0.05);
        }
        // Both optimizers hold the same moments; the second continued where the first was.
        let a: Vec<(String, Tensor)> = first.state_tensors();
        let b: Vec<(String, Tensor)> = second.state_tensors();
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert!(ta.equal(tb), "{na} differs");
        }
    }
}
