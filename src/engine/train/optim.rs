//! AdamW and SGD with momentum, following PyTorch's update rules, with state that can be saved
//! in a checkpoint and restored (candle-nn's optimisers keep theirs private).
//!
//! On the CPU each parameter is updated by one fused, in-place pass over parameter, gradient and
//! state (a candle `InplaceOp2`), with no temporary tensors: the chain of tensor ops it replaces
//! allocated a dozen buffers per parameter per step. Other devices use the tensor-op chain.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{backprop::GradStore, CpuStorage, Device, InplaceOp2, Layout, Result, Tensor, Var};

use crate::engine::models::ModelError;
use crate::spec::OptimizerSpec;

pub struct Optimizer {
    spec: OptimizerSpec,
    vars: Vec<Var>,
    state: State,
    steps: u64,
}

/// AdamW: first and second moments; SGD: momentum buffers (in `first`, `second` unused).
enum State {
    Host { first: Vec<Vec<f32>>, second: Vec<Vec<f32>> },
    Device { first: Vec<Tensor>, second: Vec<Tensor> },
}

impl Optimizer {
    pub fn new(spec: OptimizerSpec, vars: Vec<Var>) -> Result<Self> {
        let on_cpu = vars.iter().all(|v| matches!(v.device(), Device::Cpu) && v.dtype() == candle_core::DType::F32);
        Self::build(spec, vars, on_cpu)
    }

    /// The same optimiser through the chain of tensor ops on any device: the reference the
    /// fused CPU kernel is tested and benchmarked against.
    pub fn with_tensor_ops(spec: OptimizerSpec, vars: Vec<Var>) -> Result<Self> {
        Self::build(spec, vars, false)
    }

    fn build(spec: OptimizerSpec, vars: Vec<Var>, fused: bool) -> Result<Self> {
        let adam = matches!(spec, OptimizerSpec::Adamw { .. });
        let state = if fused {
            let zeros = || vars.iter().map(|v| vec![0f32; v.elem_count()]).collect::<Vec<_>>();
            State::Host { first: zeros(), second: if adam { zeros() } else { Vec::new() } }
        } else {
            let zeros = || vars.iter().map(|v| v.as_tensor().zeros_like()).collect::<Result<Vec<_>>>();
            State::Device { first: zeros()?, second: if adam { zeros()? } else { Vec::new() } }
        };
        Ok(Self { spec, vars, state, steps: 0 })
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update with learning rate `lr` (the schedule's value for this step).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let rule = Rule::new(self.spec, lr, self.steps);
        for (i, var) in self.vars.iter().enumerate() {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            match &mut self.state {
                State::Host { first, second } => {
                    let update = FusedUpdate {
                        rule,
                        first: RefCell::new(&mut first[i]),
                        second: RefCell::new(second.get_mut(i).map(Vec::as_mut_slice).unwrap_or_default()),
                    };
                    var.as_tensor().inplace_op2(&grad.contiguous()?, &update)?;
                }
                State::Device { first, second } => {
                    rule.apply_with_tensors(var, grad, &mut first[i], second.get_mut(i))?
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors, for checkpoints.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut named = Vec::new();
        let mut push = |prefix: &str, i: usize, t: Tensor| named.push((format!("optimizer.{prefix}.{i}"), t));
        match &self.state {
            State::Host { first, second } => {
                for (prefix, slots) in [("first", first), ("second", second)] {
                    for (i, (slot, var)) in slots.iter().zip(&self.vars).enumerate() {
                        push(prefix, i, Tensor::from_slice(slot, var.shape(), &Device::Cpu)?);
                    }
                }
            }
            State::Device { first, second } => {
                for (prefix, slots) in [("first", first), ("second", second)] {
                    for (i, t) in slots.iter().enumerate() {
                        push(prefix, i, t.clone());
                    }
                }
            }
        }
        Ok(named)
    }

    pub fn restore(&mut self, steps: u64, named: &mut HashMap<String, Tensor>) -> std::result::Result<(), ModelError> {
        let mut take = |prefix: &str, i: usize, var: &Var| -> std::result::Result<Tensor, ModelError> {
            let name = format!("optimizer.{prefix}.{i}");
            let t = named.remove(&name).ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
            if t.dims() != var.dims() {
                return Err(ModelError::Shape {
                    name,
                    got: t.dims().to_vec(),
                    expected: var.dims().to_vec(),
                    hint: String::new(),
                });
            }
            Ok(t)
        };
        match &mut self.state {
            State::Host { first, second } => {
                for (prefix, slots) in [("first", first), ("second", second)] {
                    for (i, slot) in slots.iter_mut().enumerate() {
                        let t = take(prefix, i, &self.vars[i])?;
                        *slot = t.flatten_all().and_then(|t| t.to_vec1::<f32>())?;
                    }
                }
            }
            State::Device { first, second } => {
                for (prefix, slots) in [("first", first), ("second", second)] {
                    for (i, slot) in slots.iter_mut().enumerate() {
                        let t = take(prefix, i, &self.vars[i])?;
                        *slot = t.to_device(self.vars[i].device())?;
                    }
                }
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// One step's coefficients.
#[derive(Clone, Copy)]
enum Rule {
    AdamW { lr: f64, decay: f64, beta1: f64, beta2: f64, eps: f64, correction1: f64, correction2: f64 },
    Sgd { lr: f64, momentum: f64, weight_decay: f64, first_step: bool },
}

impl Rule {
    fn new(spec: OptimizerSpec, lr: f64, step: u64) -> Self {
        let t = step as i32;
        match spec {
            OptimizerSpec::Adamw { weight_decay, beta1, beta2, eps, .. } => Rule::AdamW {
                lr,
                decay: 1.0 - lr * weight_decay,
                beta1,
                beta2,
                eps,
                correction1: 1.0 - beta1.powi(t),
                correction2: 1.0 - beta2.powi(t),
            },
            // PyTorch starts the momentum buffer at the first gradient rather than at zero.
            OptimizerSpec::Sgd { momentum, weight_decay, .. } => {
                Rule::Sgd { lr, momentum, weight_decay, first_step: step == 1 }
            }
        }
    }

    /// The reference formulation in tensor ops, for devices without the fused kernel.
    fn apply_with_tensors(
        &self,
        var: &Var,
        grad: &Tensor,
        first: &mut Tensor,
        second: Option<&mut Tensor>,
    ) -> Result<()> {
        let param = var.as_tensor();
        match *self {
            Rule::AdamW { lr, decay, beta1, beta2, eps, correction1, correction2 } => {
                let second = second.expect("AdamW keeps second moments");
                let m = ((&*first * beta1)? + (grad * (1.0 - beta1))?)?;
                let v = ((&*second * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
                let update = ((&m / correction1)? / ((&v / correction2)?.sqrt()? + eps)?)?;
                var.set(&((param * decay)? - (update * lr)?)?)?;
                *first = m;
                *second = v;
            }
            Rule::Sgd { lr, momentum, weight_decay, first_step } => {
                let grad = if weight_decay > 0.0 { (grad + (param * weight_decay)?)? } else { grad.clone() };
                let buf = if first_step || momentum == 0.0 { grad } else { ((&*first * momentum)? + grad)? };
                var.set(&(param - (&buf * lr)?)?)?;
                *first = buf;
            }
        }
        Ok(())
    }
}

/// The fused CPU update of one parameter, in place.
struct FusedUpdate<'a> {
    rule: Rule,
    first: RefCell<&'a mut [f32]>,
    second: RefCell<&'a mut [f32]>,
}

impl InplaceOp2 for FusedUpdate<'_> {
    fn name(&self) -> &'static str {
        "fused-optimizer-step"
    }

    fn cpu_fwd(
        &self,
        param: &mut CpuStorage,
        param_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(param), CpuStorage::F32(grad)) = (param, grad) else {
            candle_core::bail!("fused optimizer step: parameters and gradients must be f32")
        };
        let (Some((p0, p1)), Some((g0, g1))) = (param_layout.contiguous_offsets(), grad_layout.contiguous_offsets())
        else {
            candle_core::bail!("fused optimizer step: parameters and gradients must be contiguous")
        };
        let (param, grad) = (&mut param[p0..p1], &grad[g0..g1]);
        let mut first = self.first.borrow_mut();
        if param.len() != grad.len() || first.len() != param.len() {
            candle_core::bail!("fused optimizer step: {} parameters, {} gradients", param.len(), grad.len());
        }
        match self.rule {
            Rule::AdamW { lr, decay, beta1, beta2, eps, correction1, correction2 } => {
                let mut second = self.second.borrow_mut();
                let (b1, b2, eps) = (beta1 as f32, beta2 as f32, eps as f32);
                let (step_size, decay) = ((lr / correction1) as f32, decay as f32);
                let inv_sqrt_c2 = (1.0 / correction2.sqrt()) as f32;
                for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(first.iter_mut()).zip(second.iter_mut()) {
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *p = *p * decay - step_size * *m / (v.sqrt() * inv_sqrt_c2 + eps);
                }
            }
            Rule::Sgd { lr, momentum, weight_decay, first_step } => {
                let (lr, momentum, wd) = (lr as f32, momentum as f32, weight_decay as f32);
                for ((p, &g), buf) in param.iter_mut().zip(grad).zip(first.iter_mut()) {
                    let g = g + wd * *p;
                    *buf = if first_step || momentum == 0.0 { g } else { momentum * *buf + g };
                    *p -= lr * *buf;
                }
            }
        }
        Ok(())
    }
}
