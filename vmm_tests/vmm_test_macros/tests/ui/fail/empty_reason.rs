use petri::PetriVmBuilder;
use petri::PetriVmmBackend;
use vmm_test_macros::vmm_test;

#[vmm_test(ignore(reason = "", openvmm_uefi_x64(none)))]
async fn boot<T: PetriVmmBackend>(config: PetriVmBuilder<T>) -> anyhow::Result<()> {
    let _vm = config.run().await?;
    Ok(())
}

fn main() {}
