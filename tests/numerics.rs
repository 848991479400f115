//! The distillation losses, their gradients, the optimisers, the fused linear kernel and a conv net
//! against PyTorch, through the committed fixtures written by `scripts/make_fixtures.py`.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use distillery::engine::data::ImageShape;
use distillery::engine::kernels::linear::Linear;
use distillery::engine::models::{Input, Net};
use distillery::engine::rng::Rng;
use distillery::engine::train::loss::{feature_loss, hinton, logit_loss, FeatureLoss, LogitLoss};
use distillery::engine::train::optim::Optimizer;
use distillery::spec::{ArchSpec, OptimizerSpec};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn matrix(v: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn tensor(rows: &[Vec<f32>]) -> Tensor {
    let cols = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), cols), &Device::Cpu).unwrap()
}

fn assert_close(what: &str, got: f64, want: f64) {
    let rel = (got - want).abs() / want.abs().max(1e-6);
    assert!(rel <= 1e-5, "{what}: got {got}, PyTorch {want}, relative error {rel:e}");
}

/// Element-wise, relative to the largest magnitude in the reference.
fn assert_all_close(what: &str, got: &[Vec<f32>], want: &[Vec<f64>]) {
    let scale = want.iter().flatten().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    for (i, (g, w)) in got.iter().flatten().zip(want.iter().flatten()).enumerate() {
        let err = (*g as f64 - w).abs() / scale;
        assert!(err <= 1e-5, "{what}[{i}]: got {g}, PyTorch {w}, error {err:e} of the largest element");
    }
}

#[test]
fn hinton_loss_and_gradient_match_pytorch() {
    let data = fixture("hinton_loss.json");
    let cases = data["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let t = case["temperature"].as_f64().unwrap();
        let alpha = case["alpha"].as_f64().unwrap();
        let student = Var::from_tensor(&tensor(&matrix(&case["student_logits"]))).unwrap();
        let teacher = tensor(&matrix(&case["teacher_logits"]));
        let labels: Vec<u32> = serde_json::from_value(case["labels"].clone()).unwrap();
        let labels = Tensor::from_vec(labels.clone(), labels.len(), &Device::Cpu).unwrap();

        let loss = hinton(student.as_tensor(), Some(&teacher), &labels, t, alpha).unwrap();
        let scalar = |t: &Tensor| t.to_scalar::<f32>().unwrap() as f64;
        assert_close(&format!("{name}: loss"), scalar(&loss.total), case["loss"].as_f64().unwrap());
        assert_close(&format!("{name}: hard"), scalar(&loss.hard), case["hard"].as_f64().unwrap());
        if alpha > 0.0 {
            assert_close(&format!("{name}: soft"), scalar(loss.soft.as_ref().unwrap()), case["soft"].as_f64().unwrap());
        }
        let grads = loss.total.backward().unwrap();
        let grad = grads.get(student.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let want: Vec<Vec<f64>> = serde_json::from_value(case["grad_student_logits"].clone()).unwrap();
        assert_all_close(&format!("{name}: d loss / d student logits"), &grad, &want);
    }
}

#[test]
fn the_teacher_receives_no_gradient() {
    let student = Var::from_tensor(&Tensor::new(&[[1f32, 2.0, 0.5]], &Device::Cpu).unwrap()).unwrap();
    let teacher = Var::from_tensor(&Tensor::new(&[[0.2f32, 3.0, 1.0]], &Device::Cpu).unwrap()).unwrap();
    let labels = Tensor::new(&[1u32], &Device::Cpu).unwrap();
    let loss = hinton(student.as_tensor(), Some(teacher.as_tensor()), &labels, 4.0, 0.7).unwrap();
    let grads = loss.total.backward().unwrap();
    assert!(grads.get(student.as_tensor()).is_some());
    assert!(grads.get(teacher.as_tensor()).is_none());
}

/// A nested JSON array of any depth, flattened in row-major order, and its shape.
fn nd(v: &Value) -> (Vec<f64>, Vec<usize>) {
    match v.as_array() {
        Some(items) => {
            let parts: Vec<_> = items.iter().map(nd).collect();
            let mut shape = vec![parts.len()];
            shape.extend(&parts[0].1);
            (parts.into_iter().flat_map(|(values, _)| values).collect(), shape)
        }
        None => (vec![v.as_f64().unwrap()], vec![]),
    }
}

fn nd_tensor(v: &Value) -> Tensor {
    let (values, shape) = nd(v);
    Tensor::from_vec(values.iter().map(|x| *x as f32).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
}

/// Compares a loss's value and its gradient (any shape) with PyTorch's.
fn assert_loss_matches(name: &str, loss: &Tensor, input: &Var, value: &Value, grad: &Value) {
    assert_close(&format!("{name}: value"), loss.to_scalar::<f32>().unwrap() as f64, value.as_f64().unwrap());
    let grads = loss.backward().unwrap();
    let got = grads.get(input.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_all_close(&format!("{name}: gradient"), &[got], &[nd(grad).0]);
}

#[test]
fn logit_losses_and_gradients_match_pytorch() {
    let data = fixture("kd_losses.json");
    let cases = data["logit_cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let kind = match (case["loss"].as_str().unwrap(), case["beta"].as_f64()) {
            ("kl", None) => LogitLoss::Kl,
            ("reverse_kl", None) => LogitLoss::ReverseKl,
            ("js", Some(beta)) => LogitLoss::Js { beta },
            ("mse", None) => LogitLoss::Mse,
            other => panic!("unknown loss {other:?}"),
        };
        let student = Var::from_tensor(&tensor(&matrix(&case["student_logits"]))).unwrap();
        let teachers: Vec<(Tensor, f64)> = case["teachers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (tensor(&matrix(&t["logits"])), t["weight"].as_f64().unwrap()))
            .collect();
        let loss = logit_loss(kind, student.as_tensor(), &teachers, case["temperature"].as_f64().unwrap()).unwrap();
        let name = case["name"].as_str().unwrap();
        assert_loss_matches(name, &loss, &student, &case["value"], &case["grad_student_logits"]);
    }
}

#[test]
fn feature_losses_and_gradients_match_pytorch() {
    let data = fixture("kd_losses.json");
    let cases = data["feature_cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let kind = match case["loss"].as_str().unwrap() {
            "mse" => FeatureLoss::Mse,
            "cosine" => FeatureLoss::Cosine,
            other => panic!("unknown loss {other}"),
        };
        let student = Var::from_tensor(&nd_tensor(&case["student"])).unwrap();
        let loss = feature_loss(kind, student.as_tensor(), &nd_tensor(&case["teacher"])).unwrap();
        assert_loss_matches(case["name"].as_str().unwrap(), &loss, &student, &case["value"], &case["grad_student"]);
    }
}

#[test]
fn optimizers_match_pytorch_step_by_step() {
    let data = fixture("optimizers.json");
    for (case, fused) in data["cases"].as_array().unwrap().iter().flat_map(|c| [(c, true), (c, false)]) {
        let name = format!("{} ({})", case["name"].as_str().unwrap(), if fused { "fused" } else { "tensor ops" });
        let spec: OptimizerSpec = serde_json::from_value(case["optimizer"].clone()).unwrap();
        let var = Var::from_tensor(&tensor(&matrix(&case["start"]))).unwrap();
        let mut optimizer = if fused {
            Optimizer::new(spec, vec![var.clone()]).unwrap()
        } else {
            Optimizer::with_tensor_ops(spec, vec![var.clone()]).unwrap()
        };
        let grads = case["grads"].as_array().unwrap();
        let after = case["after_each_step"].as_array().unwrap();
        for (step, (grad, want)) in grads.iter().zip(after).enumerate() {
            // d/dp Σ p·g = g: injects the fixture's gradient through a real backward pass.
            let g = tensor(&matrix(grad));
            let store = (var.as_tensor() * &g).unwrap().sum_all().unwrap().backward().unwrap();
            optimizer.step(&store, spec.lr()).unwrap();
            let want: Vec<Vec<f64>> = serde_json::from_value(want.clone()).unwrap();
            assert_all_close(
                &format!("{name} after step {}", step + 1),
                &var.as_tensor().to_vec2::<f32>().unwrap(),
                &want,
            );
        }
    }
}

fn vector(v: &Value) -> Tensor {
    let values: Vec<f32> = serde_json::from_value(v.clone()).unwrap();
    Tensor::from_vec(values.clone(), values.len(), &Device::Cpu).unwrap()
}

/// The fused linear kernel's output and all three gradients, through a real backward pass.
fn fused_linear_grads(relu: bool, x: &Tensor, w: &Tensor, b: &Tensor, upstream: &Tensor) -> (Tensor, [Tensor; 3]) {
    let (x, w, b) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap(), Var::from_tensor(b).unwrap());
    let y =
        Linear { relu, input_grad: true, handover: None }.forward(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
    let grads = (&y * upstream).unwrap().sum_all().unwrap().backward().unwrap();
    let grad = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
    (y, [grad(&x), grad(&w), grad(&b)])
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    if t.rank() == 1 {
        vec![t.to_vec1().unwrap()]
    } else {
        t.to_vec2().unwrap()
    }
}

fn reference(v: &Value) -> Vec<Vec<f64>> {
    match v[0].is_array() {
        true => serde_json::from_value(v.clone()).unwrap(),
        false => vec![serde_json::from_value(v.clone()).unwrap()],
    }
}

#[test]
fn the_fused_linear_kernel_matches_pytorch() {
    let data = fixture("linear.json");
    for case in data["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (x, w) = (tensor(&matrix(&case["x"])), tensor(&matrix(&case["weight"])));
        let (b, upstream) = (vector(&case["bias"]), tensor(&matrix(&case["upstream"])));
        let (y, [gx, gw, gb]) = fused_linear_grads(case["relu"].as_bool().unwrap(), &x, &w, &b, &upstream);
        assert_all_close(&format!("{name}: y"), &rows(&y), &reference(&case["y"]));
        assert_all_close(&format!("{name}: grad x"), &rows(&gx), &reference(&case["grad_x"]));
        assert_all_close(&format!("{name}: grad weight"), &rows(&gw), &reference(&case["grad_weight"]));
        assert_all_close(&format!("{name}: grad bias"), &rows(&gb), &reference(&case["grad_bias"]));
    }
}

#[test]
fn the_fused_linear_gradients_match_finite_differences() {
    let mut rng = Rng::new(5);
    let mut random = |shape: (usize, usize)| {
        let values: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.uniform(-1.0, 1.0)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    };
    let (x, w, upstream) = (random((3, 4)), random((5, 4)), random((3, 5)));
    let b = random((1, 5)).flatten_all().unwrap();
    let (_, analytic) = fused_linear_grads(true, &x, &w, &b, &upstream);
    // Central differences of L = Σ upstream ⊙ relu(x·Wᵀ + b), in f64 from the f32 inputs.
    let loss = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
        let up: Vec<f32> = upstream.flatten_all().unwrap().to_vec1().unwrap();
        let mut total = 0.0;
        for i in 0..3 {
            for o in 0..5 {
                let z: f64 = b[o] as f64 + (0..4).map(|k| x[i * 4 + k] as f64 * w[o * 4 + k] as f64).sum::<f64>();
                total += up[i * 5 + o] as f64 * z.max(0.0);
            }
        }
        total
    };
    let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let inputs = [flat(&x), flat(&w), flat(&b)];
    for (which, grad) in analytic.iter().enumerate() {
        let grad = flat(grad);
        for (i, g) in grad.iter().enumerate() {
            let h = 1e-3f32;
            let (mut plus, mut minus) = (inputs.clone(), inputs.clone());
            plus[which][i] += h;
            minus[which][i] -= h;
            let numeric =
                (loss(&plus[0], &plus[1], &plus[2]) - loss(&minus[0], &minus[1], &minus[2])) / (2.0 * h as f64);
            assert!(
                (numeric - *g as f64).abs() < 2e-3,
                "argument {which}, element {i}: analytic {g}, numeric {numeric}"
            );
        }
    }
}

#[test]
fn the_fused_linear_kernel_equals_candles_composed_ops_and_skips_data_gradients() {
    let mut rng = Rng::new(9);
    let arch = ArchSpec::Mlp { hidden: vec![33, 17], dropout: 0.0 };
    let model = Net::init(&arch, Input { features: 29, image: None }, 7, &mut rng, &Device::Cpu).unwrap();
    let x: Vec<f32> = (0..11 * 29).map(|_| rng.uniform(-2.0, 2.0)).collect();
    let x = Tensor::from_vec(x, (11, 29), &Device::Cpu).unwrap();
    let vars = model.to_vars().unwrap();
    let run = |fused: bool| {
        let m = model.with_vars(&vars, &[]).with_fused_kernels(fused);
        let y = m.forward(&x, None, &[]).unwrap().logits;
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        // candle's matmul backward computes the data's gradient too; the kernel skips it.
        assert_eq!(grads.get(&x).is_none(), fused);
        let mut out = vec![rows(&y)];
        out.extend(vars.iter().map(|v| rows(grads.get(v.as_tensor()).unwrap())));
        out
    };
    let (fused, composed) = (run(true), run(false));
    for (i, (f, c)) in fused.iter().zip(&composed).enumerate() {
        let c: Vec<Vec<f64>> = c.iter().map(|r| r.iter().map(|v| *v as f64).collect()).collect();
        assert_all_close(&format!("output/gradient {i}"), f, &c);
    }
}

/// The conv net of `conv_net.json` (conv with padding and stride 2, batch norm in one block, max
/// and avg pooling whose floor drops a row, a hidden head layer) against the same `torch.nn`
/// network: logits in eval and train mode, the running statistics a training batch leaves, and
/// the gradients of Σ train-logits ⊙ U for every parameter.
fn conv_net_matches_pytorch(fused: bool) {
    let data = fixture("conv_net.json");
    let path = if fused { "fused kernels" } else { "candle's conv2d" };
    let arch: ArchSpec = serde_json::from_value(data["arch"].clone()).unwrap();
    assert_eq!(arch.dropout(), 0.0, "with dropout the train-mode logits would depend on the RNG");
    let image: ImageShape = serde_json::from_value(data["image"].clone()).unwrap();
    let input = Input { features: image.channels * image.height * image.width, image: Some(image) };
    let classes = data["classes"].as_u64().unwrap() as usize;
    let tensors: HashMap<String, Tensor> =
        data["tensors"].as_object().unwrap().iter().map(|(name, v)| (name.clone(), nd_tensor(v))).collect();
    let net = Net::from_named(&arch, input, classes, tensors, &Device::Cpu).unwrap().with_fused_kernels(fused);
    let x = tensor(&matrix(&data["x"]));
    let upstream = tensor(&matrix(&data["upstream"]));

    let eval = net.forward(&x, None, &[]).unwrap().logits;
    assert_all_close(&format!("{path}: eval logits"), &rows(&eval), &reference(&data["eval_logits"]));

    let vars = net.to_vars().unwrap();
    let out = net.with_vars(&vars, net.buffers()).forward(&x, Some(&mut Rng::new(0)), &[]).unwrap();
    assert_all_close(&format!("{path}: train logits"), &rows(&out.logits), &reference(&data["train_logits"]));

    let bp = net.blueprint();
    assert_eq!(out.buffers.len(), bp.buffers.len());
    for (got, (name, _)) in out.buffers.iter().zip(&bp.buffers) {
        let want = &data["running_after_train"][name];
        assert_all_close(&format!("{path}: {name} after a train-mode forward"), &rows(got), &reference(want));
    }

    let grads = out.backward(&(&out.logits * &upstream).unwrap().sum_all().unwrap()).unwrap();
    assert_eq!(vars.len(), bp.params.len());
    for (var, (name, shape)) in vars.iter().zip(&bp.params) {
        let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{path}: {name} has no gradient"));
        let (want, want_shape) = nd(&data["grads"][name]);
        assert_eq!(grad.dims(), shape.as_slice(), "{path}: {name}");
        assert_eq!(want_shape, *shape, "{path}: {name} in the fixture");
        let got = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if want.iter().all(|v| v.abs() < 1e-12) {
            // A conv bias followed by batch norm: the batch mean subtracts it, so its gradient is
            // exactly 0 (PyTorch: ~1e-17 in f64). In f32 only rounding is left; it must be small
            // next to the block's weight gradient.
            let block = name.trim_end_matches("conv.bias");
            let weight_scale =
                nd(&data["grads"][&format!("{block}conv.weight")]).0.iter().fold(0f64, |m, v| m.max(v.abs()));
            for g in &got {
                assert!((*g as f64).abs() <= 1e-5 * weight_scale, "{path}: {name}: got {g}, PyTorch 0");
            }
        } else {
            assert_all_close(&format!("{path}: d Σ logits·U / d {name}"), &[got], &[want]);
        }
    }
}

#[test]
fn the_conv_net_matches_pytorch_eval_train_running_stats_and_gradients() {
    conv_net_matches_pytorch(true);
}

/// The same through candle's own conv2d (`with_fused_kernels(false)`); the fixture's stride-2
/// conv has a stride that divides h + 2p − k in both directions, which candle's conv2d backward
/// needs.
#[test]
fn the_conv_net_through_candles_conv2d_matches_pytorch() {
    conv_net_matches_pytorch(false);
}
