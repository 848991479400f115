//! AdamW and SGD with momentum, following PyTorch's update rules, with state that can be saved
//! in a checkpoint and restored (candle-nn's optimisers keep theirs private).

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Result, Tensor, Var};

use crate::spec::OptimizerSpec;

pub struct Optimizer {
    spec: OptimizerSpec,
    vars: Vec<Var>,
    /// AdamW: first and second moments; SGD: momentum buffers (in `first`).
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    steps: u64,
}

impl Optimizer {
    pub fn new(spec: OptimizerSpec, vars: Vec<Var>) -> Result<Self> {
        let zeros = |vars: &[Var]| -> Result<Vec<Tensor>> { vars.iter().map(|v| v.as_tensor().zeros_like()).collect() };
        let first = zeros(&vars)?;
        let second = match spec {
            OptimizerSpec::Adamw { .. } => zeros(&vars)?,
            OptimizerSpec::Sgd { .. } => Vec::new(),
        };
        Ok(Self { spec, vars, first, second, steps: 0 })
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// One update with learning rate `lr` (the schedule's value for this step).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        for (i, var) in self.vars.iter().enumerate() {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let param = var.as_tensor();
            match self.spec {
                OptimizerSpec::Adamw { weight_decay, beta1, beta2, eps, .. } => {
                    let m = ((&self.first[i] * beta1)? + (grad * (1.0 - beta1))?)?;
                    let v = ((&self.second[i] * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
                    let m_hat = (&m / (1.0 - beta1.powi(t)))?;
                    let v_hat = (&v / (1.0 - beta2.powi(t)))?;
                    let decayed = (param * (1.0 - lr * weight_decay))?;
                    let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
                    var.set(&(decayed - (update * lr)?)?)?;
                    self.first[i] = m;
                    self.second[i] = v;
                }
                OptimizerSpec::Sgd { momentum, weight_decay, .. } => {
                    let grad = if weight_decay > 0.0 { (grad + (param * weight_decay)?)? } else { grad.clone() };
                    // PyTorch starts the buffer at the first gradient rather than at zero.
                    let buf = if self.steps == 1 || momentum == 0.0 {
                        grad
                    } else {
                        ((&self.first[i] * momentum)? + grad)?
                    };
                    var.set(&(param - (&buf * lr)?)?)?;
                    self.first[i] = buf;
                }
            }
        }
        Ok(())
    }

    pub fn state(&self) -> (u64, Vec<(String, Tensor)>) {
        let mut named = Vec::new();
        for (i, t) in self.first.iter().enumerate() {
            named.push((format!("optimizer.first.{i}"), t.clone()));
        }
        for (i, t) in self.second.iter().enumerate() {
            named.push((format!("optimizer.second.{i}"), t.clone()));
        }
        (self.steps, named)
    }

    pub fn restore(&mut self, steps: u64, named: &mut HashMap<String, Tensor>) -> std::result::Result<(), String> {
        for (prefix, slots) in [("first", &mut self.first), ("second", &mut self.second)] {
            for (i, slot) in slots.iter_mut().enumerate() {
                let name = format!("optimizer.{prefix}.{i}");
                let t = named.remove(&name).ok_or_else(|| format!("checkpoint lacks `{name}`"))?;
                if t.dims() != slot.dims() {
                    return Err(format!("checkpoint tensor `{name}` has shape {:?}, expected {:?}", t.dims(), slot.dims()));
                }
                *slot = t;
            }
        }
        self.steps = steps;
        Ok(())
    }
}
