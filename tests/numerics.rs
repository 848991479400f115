//! The distillation loss, its gradient and the optimisers against PyTorch, through the committed
//! fixtures written by `scripts/make_fixtures.py`.

use candle_core::{Device, Tensor, Var};
use distillery::engine::loss::hinton;
use distillery::engine::optim::Optimizer;
use distillery::spec::OptimizerSpec;
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
            assert_all_close(&format!("{name} after step {}", step + 1), &var.as_tensor().to_vec2::<f32>().unwrap(), &want);
        }
    }
}
