"""The masked-token machinery ViT-ReciproCAM runs on."""
