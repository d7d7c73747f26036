"""Checkpoints in and out: conversion from transformers and timm (key maps), export to ONNX and torch.export."""
