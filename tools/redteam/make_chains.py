#!/usr/bin/env python3
"""Writes long node chains as ONNX models (no dependencies: hand-encoded protobuf).

usage: make_chains.py KIND N OUT.onnx
  dead          a live Conv on x [1,2,4,4] plus N Relus nobody reads (dead-node removal)
  reshape       Conv output through N Reshapes to the graph output
  constreshape  N Reshapes of an initializer, added to the Conv output
  bias          the Conv bias through N Reshapes of an initializer (constant resolution)
"""
import sys
def varint(n):
    out=bytearray()
    n &= (1<<64)-1
    while True:
        b=n&0x7f; n>>=7
        if n: out.append(b|0x80)
        else: out.append(b); return bytes(out)
def key(f,w): return varint((f<<3)|w)
def vi(f,n): return key(f,0)+varint(n)
def ld(f,b):
    if isinstance(b,str): b=b.encode()
    return key(f,2)+varint(len(b))+b
def tensor(name,dims,dt,raw):
    return b''.join(vi(1,d) for d in dims)+vi(2,dt)+ld(8,name)+ld(9,raw)
def valueinfo(name,dims):
    shape=b''.join(ld(1,vi(1,d)) for d in dims)
    return ld(1,name)+ld(2,ld(1,vi(1,1)+ld(2,shape)))
def node(op,ins,outs,name,attrs=b''):
    return b''.join(ld(1,i) for i in ins)+b''.join(ld(2,o) for o in outs)+ld(3,name)+ld(4,op)+attrs
import struct
def model(nodes,inits,inputs,outputs):
    g=b''.join(ld(1,n) for n in nodes)+ld(2,'g')+b''.join(ld(5,t) for t in inits)+b''.join(ld(11,i) for i in inputs)+b''.join(ld(12,o) for o in outputs)
    return vi(1,8)+ld(8,ld(1,'')+vi(2,13))+ld(7,g)
kind,n=sys.argv[1],int(sys.argv[2])
w=tensor('w',[2,2,1,1],1,struct.pack('<4f',0.5,-0.25,0.75,1.0))
nodes=[node('Conv',['x','w'],['c'],'conv')]
inits=[w]
if kind=='dead':
    prev='x'
    for i in range(n):
        nodes.append(node('Relu',[prev],[f'd{i}'],f'dead{i}')); prev=f'd{i}'
    out='c'
elif kind=='reshape':
    inits.append(tensor('s',[4],7,struct.pack('<4q',1,2,4,4)))
    prev='c'
    for i in range(n):
        nodes.append(node('Reshape',[prev,'s'],[f'r{i}'],f'reshape{i}')); prev=f'r{i}'
    out=prev
elif kind=='constreshape':
    inits.append(tensor('s',[4],7,struct.pack('<4q',1,2,4,4)))
    inits.append(tensor('k',[1,2,4,4],1,struct.pack('<32f',*[0.1*i for i in range(32)])))
    prev='k'
    for i in range(n):
        nodes.append(node('Reshape',[prev,'s'],[f'r{i}'],f'reshape{i}')); prev=f'r{i}'
    nodes.append(node('Add',['c',prev],['y'],'add'))
    out='y'
elif kind=='bias':
    inits.append(tensor('s',[1],7,struct.pack('<q',2)))
    inits.append(tensor('b',[2],1,struct.pack('<2f',0.1,-0.2)))
    prev='b'
    nodes=[]
    for i in range(n):
        nodes.append(node('Reshape',[prev,'s'],[f'r{i}'],f'reshape{i}')); prev=f'r{i}'
    nodes.append(node('Conv',['x','w',prev],['c'],'conv'))
    out='c'
open(sys.argv[3],'wb').write(model(nodes,inits,[valueinfo('x',[1,2,4,4])],[valueinfo(out,[1,2,4,4])]))
