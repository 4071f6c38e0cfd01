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
